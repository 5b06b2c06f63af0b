"""bench export: a tiny trained run's folds as ONNX files, checked against PyTorch on real photographs,
and bench predict with those files writing the masks the checkpoints write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

BENCH = Path(sys.executable).parent / "bench"
pytestmark = pytest.mark.skipif(not BENCH.exists(), reason=f"no installed bench command beside {sys.executable}")
ort = pytest.importorskip("onnxruntime", reason="pip install 'segbench[onnx]'")

# (width, height) of the 8 real crops: none a multiple of 32, so the fit pads each to another input shape
CROPS = [(96, 64), (70, 100), (128, 96), (150, 90), (64, 64), (200, 120), (90, 150), (111, 77)]


def user_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COLUMNS")}
    env.update(COLUMNS="80", NO_ALBUMENTATIONS_UPDATE="1", SEGBENCH_CACHE=str(tmp_path / "cache"))
    return env


def installed_bench(*args, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BENCH), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def photographs(tmp_path_factory) -> Path:
    """8 crops of a real photograph (Grace Hopper's portrait, which matplotlib ships), of 8 sizes."""
    import matplotlib.cbook

    photo = cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    folder = tmp_path_factory.mktemp("photographs")
    for index, (width, height) in enumerate(CROPS):
        top, left = 37 * index, 41 * index
        cv2.imwrite(str(folder / f"photo{index}.jpg"), photo[top:top + height, left:left + width])
    return folder


@pytest.fixture(scope="module")
def exported(synthetic_set, tiny_recipe, photographs, tmp_path_factory):
    """A tiny fp32 run (2 folds) and its export, made by the installed bench from a user's folder."""
    from rich.console import Console

    from harness.engine.run import RunRequest, run
    from harness.recipe.plugins import load_plugins
    from harness.recipe.schema import load_recipe

    folder = tmp_path_factory.mktemp("export")
    plugins = load_plugins()
    recipe = load_recipe(tiny_recipe(folder / "tiny.toml", synthetic_set, extra="[predict]\ntta = \"hflip\""), plugins)
    run_folder = run(RunRequest(recipe, folder / "results", name="tiny"), plugins, Console(quiet=True))
    user = folder / "user"
    user.mkdir()
    done = installed_bench("export", run_folder, "--out", "tiny-onnx", "--check-images", photographs,
                           cwd=user, env=user_env(folder))
    return run_folder, user / "tiny-onnx", done


def test_export_writes_every_fold_and_a_card_that_says_how_to_use_them(exported):
    run_folder, export, done = exported
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert "exported 2 folds of tiny" in done.stdout and "matches PyTorch within" in done.stdout
    card = json.loads((export / "model.json").read_text())
    assert card["folds"] == ["fold0.onnx", "fold1.onnx"] and card["opset"] == 18
    assert card["input"]["dtype"] == "uint8" and card["input"]["channels"] == "RGB"
    assert "dynamic" in card["input"]["height_width"]
    assert card["predict"]["tta"] == "hflip" and card["predict"]["threshold"] == 0.5
    summary = json.loads((run_folder / "summary.json").read_text())
    assert card["oof_dice"] == round(summary["oof_dice"], 5)
    low, high = card["oof_dice_95"]
    assert low <= card["oof_dice"] <= high
    assert card["check"]["images"] == 8 and card["check"]["max_abs_probability_difference"] <= 1e-4
    assert (export / "recipe.toml").read_text() == (run_folder / "recipe.toml").read_text()


def test_onnxruntime_gives_pytorchs_probabilities_on_real_photographs(exported, photographs, plugins):
    """Checked here, not read from the card: each fold's file through onnxruntime against the fold's
    checkpoint through PyTorch (fp32), on the 8 real crops at their 8 fitted shapes."""
    from harness.data.image_files import ImageSamples, list_images
    from harness.engine.assembly import Assembly, recipe_fit, recipe_normalise
    from harness.recipe.schema import load_recipe

    run_folder, export, _ = exported
    recipe = load_recipe(run_folder / "recipe.toml", plugins)
    parts = Assembly(recipe, plugins)
    samples = ImageSamples(list_images([photographs]), None, recipe_fit(recipe))
    inputs = [samples[index].image[None] for index in range(len(samples))]
    assert len({tuple(image.shape) for image in inputs}) >= 6  # dynamic height and width, not one shape
    normalise = recipe_normalise(recipe)
    for fold in (0, 1):
        model = parts.model(pretrained=False)
        model.load_state_dict(torch.load(run_folder / f"fold-{fold}" / "best.pt", weights_only=True)["model"])
        session = ort.InferenceSession(str(export / f"fold{fold}.onnx"), providers=["CPUExecutionProvider"])
        for image in inputs:
            with torch.no_grad():
                expected = torch.sigmoid(model.eval()(normalise(image))).numpy()
            got = torch.sigmoid(torch.from_numpy(session.run(None, {"image": image.numpy()})[0])).numpy()
            assert got.shape == expected.shape
            assert np.abs(got - expected).max() <= 1e-4


def test_predict_with_the_export_writes_the_checkpoints_masks(exported, photographs, tmp_path):
    run_folder, export, _ = exported
    user, env = export.parent, user_env(tmp_path)
    for source, out in ((export, "by-onnx"), (run_folder, "by-torch")):
        done = installed_bench("predict", source, photographs, "--out", out, "--format", "png", "--device", "cpu",
                               cwd=user, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
        assert "8 images in" in done.stdout
    assert "onnxruntime" in json.loads((user / "by-onnx" / "predict.json").read_text())["device"]
    for index, (width, height) in enumerate(CROPS):
        by_onnx = cv2.imread(str(user / "by-onnx" / "masks" / f"photo{index}.png"), cv2.IMREAD_GRAYSCALE)
        by_torch = cv2.imread(str(user / "by-torch" / "masks" / f"photo{index}.png"), cv2.IMREAD_GRAYSCALE)
        assert by_onnx.shape == (height, width)
        assert np.array_equal(by_onnx, by_torch), f"photo{index}: {(by_onnx != by_torch).sum()} pixels differ"


def test_bad_exports_are_one_line(exported, tmp_path, bench, monkeypatch):
    run_folder, export, _ = exported
    unfinished = Path(shutil.copytree(run_folder, tmp_path / "unfinished"))
    for fold in unfinished.glob("fold-*"):
        (fold / "fold.json").unlink()
    said = bench("export", unfinished, "--out", tmp_path / "out")
    assert said.code == 2 and "no finished fold to export" in said.err and len(said.err.strip().splitlines()) == 1

    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text("{}")
    said = bench("export", ensemble, "--out", tmp_path / "out")
    assert said.code == 2 and "an ensemble; bench export exports runs so far" in said.err

    said = bench("export", run_folder, "--out", tmp_path / "out", "--format", "tflite")
    assert said.code == 2 and "--format tflite: expected one of onnx" in said.err

    said = bench("predict", export, run_folder, "--out", tmp_path / "p", "--device", "cuda")
    assert said.code == 2 and "predicts on the CPU with onnxruntime" in said.err

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    said = bench("export", run_folder, "--out", tmp_path / "out")
    assert said.code == 2 and "pip install 'segbench[onnx]'" in said.err and "onnxruntime" in said.err


def test_files_fixed_at_one_shape_are_checked_and_used_at_it_only(exported, photographs, tmp_path, bench,
                                                                     monkeypatch):
    """The exporter's fallback for a network it cannot trace with dynamic sides: one shape, batch 1, said
    in the card; an image of another shape is one line naming the file and the shape."""
    import harness.export.onnx as onnx_export

    export = onnx_export._export
    monkeypatch.setattr(onnx_export, "_export",
                        lambda module, example, path, name, dynamic: export(module, example, path, name, False))
    run_folder, _, _ = exported
    said = bench("export", run_folder, "--out", tmp_path / "fixed", "--check-images", photographs)
    assert said.code == 0, said.err
    card = json.loads((tmp_path / "fixed" / "model.json").read_text())
    assert card["input"]["dynamic"] is False and card["input"]["height_width"] == "fixed at 64x96 (height x width), batch 1"
    assert card["check"]["images"] == 1  # the one photograph whose fitted input has that shape
    said = bench("predict", tmp_path / "fixed", photographs / "photo0.jpg", "--out", tmp_path / "one", "--format", "png")
    assert said.code == 0 and (tmp_path / "one" / "masks" / "photo0.png").is_file(), said.err
    said = bench("predict", tmp_path / "fixed", photographs, "--out", tmp_path / "all", "--format", "png")
    assert said.code == 2 and len(said.err.strip().splitlines()) == 1, said.err
    assert "fold0.onnx: onnxruntime cannot run it on a (1, 3, " in said.err


UNTRACEABLE = '''
import torch
from harness.api import hookimpl


class Untraceable(torch.nn.Module):
    """Trains and predicts, but decides in NumPy: the exporter's symbolic tensors have no values."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y if y.detach().numpy().mean() > -1e9 else -y


@hookimpl
def bench_models():
    return {"untraceable": Untraceable}
'''


def test_a_network_the_exporter_cannot_trace_is_named(tmp_path, bench, synthetic_set, tiny_recipe, photographs):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "untraceable.py").write_text(UNTRACEABLE)
    recipe = tiny_recipe(tmp_path / "u.toml", synthetic_set, name="untraceable", model='name = "untraceable"', epochs=1)
    said = bench("--plugins-dir", tmp_path / "plugins", "run", recipe, "--results", tmp_path / "results")
    assert said.code == 0, said.err
    run_folder = next((tmp_path / "results").glob("untraceable-*"))
    said = bench("--plugins-dir", tmp_path / "plugins", "export", run_folder, "--out", tmp_path / "out",
                 "--check-images", photographs)
    assert said.code == 2 and len(said.err.strip().splitlines()) == 1, said.err
    assert "model 'untraceable': the ONNX exporter cannot trace it" in said.err and "numpy" in said.err
    assert not (tmp_path / "out" / "model.json").exists()
