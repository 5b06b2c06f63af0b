"""The export folder: the one place that knows its layout, writes it and reads it back.

``bench export RUN --out DIR`` writes::

    DIR/model.json     the card: what the files are and how to use them without segbench
    DIR/foldK.onnx     one network per exported fold: uint8 RGB NCHW in, logits out
    DIR/recipe.toml    the run's recipe, and its choices.json where it has one: how ``bench predict``
    DIR/choices.json   fits and preprocesses images for these files, as for the run itself

``model.json`` is written last, so a folder without it is an unfinished export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import BenchError
from harness.runs.folder import read_json

CARD_FILE = "model.json"
FORMAT = "onnx"


@dataclass(frozen=True)
class ExportFolder:
    path: Path

    card = property(lambda self: self.path / CARD_FILE)
    recipe_toml = property(lambda self: self.path / "recipe.toml")
    choices = property(lambda self: self.path / "choices.json")

    def fold_file(self, k: int) -> Path:
        return self.path / f"fold{k}.onnx"

    def is_export(self) -> bool:
        return self.card.is_file()

    def read_card(self) -> dict[str, Any]:
        """The card, checked to be an ONNX export's; one line naming the file otherwise."""
        card = read_json(self.card)
        if card.get("format") != FORMAT or not card.get("folds"):
            raise BenchError(f"{self.card}: not a segbench ONNX export (no format 'onnx' with folds)")
        missing = [name for name in card["folds"] if not (self.path / name).is_file()]
        if missing:
            raise BenchError(f"{self.path / missing[0]}: missing; export the run again with bench export")
        return card

    def fold_files(self) -> list[Path]:
        return [self.path / name for name in self.read_card()["folds"]]


def export_folder(target: str) -> ExportFolder | None:
    """The export folder ``target`` names, or None when it names something else (a run, an ensemble)."""
    folder = ExportFolder(Path(target))
    return folder if folder.is_export() else None
