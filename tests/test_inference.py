"""`bench predict`: a run's fold models on any images, the masks its own test store says, resumable,
an unreadable image skipped by name; and `bench run` with `predict.test = false`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.data.image_files import decode_image, to_chw
from harness.data.rle import decode
from harness.data.submission import read_submission
from harness.runs.probabilities import ProbabilityMaps, binarise


@pytest.fixture(scope="module")
def trained(synthetic_set, tmp_path_factory, tiny_recipe) -> Path:
    """A complete one-epoch tiny run (two folds, hflip TTA), with its test store."""
    from rich.console import Console

    from harness.engine.run import RunRequest, run
    from harness.recipe.plugins import load_plugins
    from harness.recipe.schema import load_recipe

    folder = tmp_path_factory.mktemp("predict")
    path = tiny_recipe(folder / "tiny.toml", synthetic_set, name="tiny", epochs=1, extra="[predict]\ntta = 'hflip'")
    plugins = load_plugins()
    return run(RunRequest(load_recipe(path, plugins), folder / "results", name="tiny", device="cpu"), plugins,
               Console(quiet=True))


def expected_masks(run: Path) -> dict[str, np.ndarray]:
    """What the run's own test store says, binarised at the run's threshold (0.5 here)."""
    store = ProbabilityMaps.open(run / "test_maps")
    return {image_id: binarise(np.array(store.quantised(image_id))) for image_id in store.ids}


@pytest.mark.parametrize("format_", ["png", "rle", "maps"])
def test_predict_writes_the_masks_of_the_runs_own_test_store(bench, trained, synthetic_set, tmp_path, format_):
    out = tmp_path / "out"
    result = bench("predict", trained, synthetic_set / "test", "--out", out, "--format", format_, "--device", "cpu")
    assert result.code == 0, result.err
    assert "16 images in" in result.out and "0 skipped" in result.out
    expected = expected_masks(trained)
    if format_ == "png":
        got = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (out / "masks").glob("*.png")}
        assert {i: np.unique(m).tolist() for i, m in got.items() if set(np.unique(m)) - {0, 255}} == {}
        got = {i: m == 255 for i, m in got.items()}
    elif format_ == "rle":
        rows = list(read_submission(out / "submission.csv.gz"))
        assert [image_id for _, image_id, _ in rows] == sorted(expected)  # input order: the folder's, by name
        got = {image_id: decode(rle, expected[image_id].shape).astype(bool) for _, image_id, rle in rows}
    else:
        maps = ProbabilityMaps.open(out / "maps")
        got = {image_id: binarise(np.array(maps.quantised(image_id))) for image_id in maps.ids}
    assert sorted(got) == sorted(expected)
    for image_id, mask in expected.items():
        np.testing.assert_array_equal(got[image_id], mask, err_msg=image_id)
    summary = json.loads((out / "predict.json").read_text())
    assert summary["images"] == summary["predicted"] == 16 and summary["skipped"] == []
    assert summary["format"] == format_ and summary["decoder"].startswith("simplejpeg")


class _Killed(BaseException):
    """Raised from a write: the job stops there, as a SIGKILL would stop it (nothing is cleaned up)."""


@pytest.mark.parametrize("format_", ["png", "maps"])
def test_a_killed_job_run_again_predicts_only_what_is_missing(trained, synthetic_set, tmp_path, monkeypatch, format_):
    from rich.console import Console

    from harness.engine import outputs
    from harness.engine.predict_run import PredictRequest, predict
    from harness.recipe.plugins import load_plugins

    plugins, out = load_plugins(), tmp_path / "out"
    request = PredictRequest(str(trained), [synthetic_set / "test"], out, format=format_, device="cpu", batch_size=4)
    kind = {"png": outputs.MaskFiles, "maps": outputs.MapStore}[format_]
    files = {"png": "masks/*.png", "maps": "maps/*.zst"}[format_]
    original, calls, lock = kind.write, [], threading.Lock()

    def write_then_die(self, image_id, levels):
        with lock:  # writer threads: exactly five get through
            if len(calls) >= 5:
                raise _Killed
            calls.append(image_id)
        original(self, image_id, levels)

    monkeypatch.setattr(kind, "write", write_then_die)
    with pytest.raises(_Killed):
        predict(request, plugins, Console(quiet=True))
    written = {p: p.stat().st_mtime_ns for p in out.glob(files)}
    assert len(written) == 5
    monkeypatch.setattr(kind, "write", original)
    predict(request, plugins, Console(quiet=True))
    summary = json.loads((out / "predict.json").read_text())
    assert (summary["resumed"], summary["predicted"]) == (5, 11)
    assert {p: p.stat().st_mtime_ns for p in written} == written  # the finished ones were not rewritten
    assert len(list(out.glob(files))) == 16


def test_a_sigkilled_rle_job_run_again_predicts_only_what_is_missing(bench, trained, synthetic_set, tmp_path):
    """Killed while a full-size image takes seconds, after three small ones were journaled; the rerun
    (without the large one) skips those three, drops a line the kill cut short, and writes the rest."""
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    small = sorted((synthetic_set / "test").glob("*.jpg"))[:6]
    for prefix, path in zip("aaazzz", small):
        shutil.copy(path, images / f"{prefix}_{path.name}")
    large = cv2.resize(cv2.imread(str(small[0])), (1918, 1280))
    cv2.imwrite(str(images / "m_large.jpg"), large)  # between the a_ and the z_ images, by name
    command = [sys.executable, "-m", "harness.cli", "predict", str(trained), str(images), "--out", str(out),
               "--device", "cpu", "--batch-size", "1", "--workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal, deadline = out / "rle.part", time.monotonic() + 120
    while not (journal.exists() and journal.read_bytes().count(b"\n") == 3):
        assert process.poll() is None and time.monotonic() < deadline, "predict ended before it could be killed"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "submission.csv.gz").exists()
    with open(journal, "ab") as handle:
        handle.write(b"cut_short_by_the_kill,12 3")
    (images / "m_large.jpg").unlink()
    rerun = bench(*command[3:])  # the same command, in this process
    assert rerun.code == 0, rerun.err
    summary = json.loads((out / "predict.json").read_text())
    assert (summary["resumed"], summary["predicted"]) == (3, 3)
    rows = {image_id: rle for _, image_id, rle in read_submission(out / "submission.csv.gz")}
    assert list(rows) == sorted(p.stem for p in images.iterdir())
    expected = expected_masks(trained)
    for image_id, rle in rows.items():
        mask = expected[image_id.split("_", 1)[1]]
        np.testing.assert_array_equal(decode(rle, mask.shape).astype(bool), mask, err_msg=image_id)


def test_an_unreadable_image_is_skipped_by_name_and_the_others_written(bench, trained, synthetic_set, tmp_path):
    images = Path(shutil.copytree(synthetic_set / "test", tmp_path / "images"))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    out = tmp_path / "out"
    result = bench("predict", trained, images, "--out", out, "--format", "png", "--device", "cpu")
    assert result.code == 1
    assert "broken.jpg" in result.out and "skipped" in result.out and "16 images in" in result.out
    assert len(list((out / "masks").glob("*.png"))) == 16 and not (out / "masks" / "broken.png").exists()
    skipped = json.loads((out / "predict.json").read_text())["skipped"]
    assert [Path(s["image"]).name for s in skipped] == ["broken.jpg"] and "cannot decode" in skipped[0]["reason"]


def one_error_line(result, *words: str) -> None:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_bad_inputs_are_one_line(bench, trained, synthetic_set, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(bench("predict", trained, empty, "--out", tmp_path / "o1"), "no .jpg", str(empty))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(trained / "recipe.toml", no_weights / "recipe.toml")
    one_error_line(bench("predict", no_weights, synthetic_set / "test", "--out", tmp_path / "o2"),
                   str(no_weights / "fold-0" / "best.pt"))
    twins = [tmp_path / "a", tmp_path / "b"]
    for folder in twins:
        folder.mkdir()
        shutil.copy(next((synthetic_set / "test").glob("*.jpg")), folder / "same.jpg")
    one_error_line(bench("predict", trained, *twins, "--out", tmp_path / "o3"), "same", "image id")
    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text("{}")
    one_error_line(bench("predict", ensemble, synthetic_set / "test", "--out", tmp_path / "o4"),
                   "written before bench predict could apply ensembles")


def test_a_run_trained_in_fp16_predicts_on_a_cpu_in_fp32(bench, trained, synthetic_set, tmp_path):
    """fp16 is a CUDA precision: a run trained with it (on a GPU) still predicts on a CPU, in fp32,
    which its own weights are; here the tiny run's recipe is relabelled as a GPU run's would read."""
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    (run / "recipe.toml").write_text((run / "recipe.toml").read_text().replace('precision = "fp32"',
                                                                             'precision = "fp16"'))
    result = bench("predict", run, synthetic_set / "test", "--out", tmp_path / "out", "--format", "png",
                   "--device", "cpu", "--workers", "0")
    assert result.code == 0 and "fp32" in result.out, result.out + result.err
    assert expected_masks(trained).keys() == {p.stem for p in (tmp_path / "out" / "masks").glob("*.png")}


def test_a_list_file_names_images_relative_to_itself(bench, trained, synthetic_set, tmp_path):
    images = sorted((synthetic_set / "test").glob("*.jpg"))[:3]
    shutil.copytree(synthetic_set / "test", tmp_path / "images")
    listing = tmp_path / "lists" / "list.txt"
    listing.parent.mkdir()
    listing.write_text("".join(f"{Path('..') / 'images' / p.name}\n" for p in images) + "\n")
    result = bench("predict", trained, listing, "--out", tmp_path / "out", "--format", "png", "--device", "cpu")
    assert result.code == 0, result.err
    assert sorted(p.stem for p in (tmp_path / "out" / "masks").glob("*.png")) == [p.stem for p in images]


def test_decode_image_gives_the_pixels_of_opencv(synthetic_set, tmp_path):
    """The decoder of training and prediction: libjpeg-turbo's pixels, as cv2.imread gives them."""
    path = next((synthetic_set / "test").glob("*.jpg"))
    reference = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_image(path), reference)
    png = tmp_path / "image.png"
    cv2.imwrite(str(png), cv2.imread(str(path)))
    np.testing.assert_array_equal(decode_image(png), reference)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert decode_image(tmp_path / "bad.jpg") is None and decode_image(tmp_path / "missing.jpg") is None


@pytest.mark.parametrize("channels,dtype", [(3, np.uint8), (1, np.uint8), (6, np.uint8), (3, np.float32)])
def test_to_chw_gives_the_planes_of_any_image_view(channels, dtype):
    """OpenCV's split into one array's planes: the pixels of a transpose, whatever the strides it is given."""
    image = (np.random.default_rng(0).random((5, 7, channels)) * 200).astype(dtype)
    for view in (image, image[:, ::-1], image[::2], image[..., ::-1]):
        planes = to_chw(view)
        assert planes.is_contiguous()
        np.testing.assert_array_equal(planes.numpy(), view.transpose(2, 0, 1))


def test_a_run_with_predict_test_false_has_no_test_store(bench, synthetic_set, tmp_path, tiny_recipe):
    recipe = tiny_recipe(tmp_path / "scored.toml", synthetic_set, name="scored", epochs=1)
    result = bench("run", recipe, "--results", tmp_path, "--name", "scored", "--device", "cpu",
                   "--set", "predict.test=false")
    assert result.code == 0, result.err
    run = tmp_path / "scored"
    assert (run / "summary.json").exists() and (run / "oof_maps").is_dir()
    assert not list(run.glob("test_maps*")) and not (run / "test.json").exists()


def test_predict_test_false_leaves_a_recipe_hash_alone_when_unset_and_refuses_pseudo_labels(
        synthetic_set, tmp_path, tiny_recipe, plugins):
    from harness.engine.run import run_id
    from harness.errors import BenchError
    from harness.recipe.schema import load_recipe

    plain = load_recipe(tiny_recipe(tmp_path / "plain.toml", synthetic_set), plugins)
    assert "test" not in tomllib.loads(plain.to_toml())["predict"]  # unset: existing recipes keep their hash
    off = load_recipe(tiny_recipe(tmp_path / "off.toml", synthetic_set), plugins, overrides=["predict.test=false"])
    assert run_id(off) != run_id(plain)
    both = tiny_recipe(tmp_path / "both.toml", synthetic_set, extra="[pseudo_label]\n[predict]\ntest = false")
    with pytest.raises(BenchError, match="predict.test = false"):
        load_recipe(both, plugins)


def test_a_full_disk_is_one_line_and_a_rerun_resumes(bench, trained, synthetic_set, tmp_path, monkeypatch):
    import errno

    from harness import io

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    monkeypatch.setattr(io.os, "fsync", no_space)
    full = bench("predict", trained, synthetic_set / "test", "--out", out, "--format", "png", "--device", "cpu")
    one_error_line(full, str(out / "masks"), "no space left")
    monkeypatch.undo()
    assert bench("predict", trained, synthetic_set / "test", "--out", out, "--format", "png").code == 0
    assert len(list((out / "masks").glob("*.png"))) == 16


def _with_predict_key(run: Path, copy: Path, line: str) -> Path:
    """A copy of ``run`` whose recipe has ``line`` in its [predict] table."""
    shutil.copytree(run, copy)
    recipe = copy / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("[predict]\n", f"[predict]\n{line}\n", 1))
    return copy


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler (g++)")
def test_compiled_prediction_in_two_workers_gives_the_eager_maps(bench, synthetic_set, tmp_path, tiny_recipe):
    """predict.compile: compiled in the main process, then again in each worker that predicts (16 images in
    batches of 4 on 2 workers); the maps are the eager path's within one level, the masks the same. The
    floor model (``pointwise``), which compiles in seconds: what is tested is the pipeline around it."""
    recipe = tiny_recipe(tmp_path / "pointwise.toml", synthetic_set, name="pointwise", model='name = "pointwise"',
                         epochs=1, extra="[predict]\ntta = 'hflip'")
    assert bench("run", recipe, "--results", tmp_path, "--name", "pointwise", "--device", "cpu").code == 0
    trained = tmp_path / "pointwise"
    compiled = _with_predict_key(trained, tmp_path / "compiled", "compile = true")
    out = tmp_path / "out"
    result = bench("predict", compiled, synthetic_set / "test", "--out", out, "--format", "maps", "--device", "cpu",
                   "--batch-size", "4", "--workers", "2")
    assert result.code == 0, result.err
    assert "16 images in" in result.out and not result.err.strip()
    eager, got = ProbabilityMaps.open(trained / "test_maps"), ProbabilityMaps.open(out / "maps")
    assert sorted(got.written_ids()) == sorted(eager.ids)
    for image_id in eager.ids:
        want, have = np.array(eager.quantised(image_id), np.int16), np.array(got.quantised(image_id), np.int16)
        assert np.abs(want - have).max() <= 1, image_id
        assert np.mean(binarise(want.astype(np.uint8)) != binarise(have.astype(np.uint8))) < 1e-3, image_id


def test_a_failed_compile_is_one_line_before_any_image_is_read(bench, trained, synthetic_set, tmp_path, monkeypatch):
    import torch

    def no_compiler(function, **options):
        def failing(*args, **kwargs):
            raise torch._dynamo.exc.TorchDynamoException("InvalidCxxCompiler: No working C++ compiler found\n"
                                                          "  the rest of a long message")
        return failing

    monkeypatch.setattr(torch, "compile", no_compiler)
    compiled = _with_predict_key(trained, tmp_path / "compiled", "compile = true")
    result = bench("predict", compiled, synthetic_set / "test", "--out", tmp_path / "out", "--device", "cpu")
    one_error_line(result, "predict.compile", "No working C++ compiler found", "predict.compile = false")
    assert not (tmp_path / "out" / "rle.part").exists() or not (tmp_path / "out" / "rle.part").read_bytes()


def test_a_compile_option_this_pytorch_does_not_know_is_one_line(bench, trained, synthetic_set, tmp_path, monkeypatch):
    import torch

    def unknown_option(function, **options):
        raise RuntimeError("Unexpected optimization option realize_cpu_acc_reads_threshold, "
                           "known options are ['a', 'b']")

    monkeypatch.setattr(torch, "compile", unknown_option)
    compiled = _with_predict_key(trained, tmp_path / "compiled", "compile = true")
    result = bench("predict", compiled, synthetic_set / "test", "--out", tmp_path / "out", "--device", "cpu")
    one_error_line(result, "predict.compile", "Unexpected optimization option realize_cpu_acc_reads_threshold",
                   "predict.compile = false")
    assert "known options" not in result.err
