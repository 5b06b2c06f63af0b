"""Which layout a data folder is in, and opening it with the recipe's ``[data]`` settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from harness.data.carvana import is_carvana, open_carvana
from harness.data.dataset import DataFolder, ImageSet
from harness.data.folders import is_folders, open_folders
from harness.errors import BenchError

LayoutChoice = Literal["auto", "carvana", "folders"]


def detect_layout(root: Path) -> Literal["carvana", "folders"]:
    """``folders`` for a folder with images/, ``carvana`` for one with train/ (or train_hq/)."""
    if not root.is_dir():
        raise BenchError(f"data folder {root} does not exist or is not a folder")
    carvana, folders = is_carvana(root), is_folders(root)
    if carvana and folders:
        raise BenchError(f"data folder {root} has both images/ (folders layout) and train/ (Carvana layout); "
                         "say which with data.layout")
    if not (carvana or folders):
        raise BenchError(f"data folder {root} has neither images/ and masks/ (the folders layout) nor train/ and "
                         "train_masks/ (the Carvana layout); see README, \"Your own data\"")
    return "carvana" if carvana else "folders"


def open_data(root: Path | str, layout: LayoutChoice = "auto", images: ImageSet = "standard",
              mask_suffix: str | None = None, groups: str | None = None,
              group_pattern: str | None = None) -> DataFolder:
    """The data folder, opened and checked in its layout (``auto``: ``detect_layout``). The Carvana
    layout takes ``images``; the folders layout the mask suffix and the groups: a setting the layout
    does not read is one line rather than silently unused."""
    root = Path(root)
    chosen = detect_layout(root) if layout == "auto" else layout
    if chosen == "carvana":
        unused = [key for key, value in (("data.mask_suffix", mask_suffix), ("data.groups", groups),
                                         ("data.group_pattern", group_pattern)) if value is not None]
        if unused:
            raise BenchError(f"{', '.join(unused)}: settings of the folders layout, and {root} is in the Carvana "
                             "layout, whose groups are the car ids")
        return open_carvana(root, images)
    if chosen == "folders":
        if images != "standard":
            raise BenchError(f"data.images = {images!r}: Carvana's train_hq/ and test_hq/, and {root} is in the folders "
                             "layout; --set data.images=standard reads its images/")
        return open_folders(root, mask_suffix, groups, group_pattern)
    raise BenchError(f"data.layout = {layout!r}: expected auto, carvana or folders")
