"""The README's "Using it" block, run as a new user types it.

Every line of that block, parsed from README.md (so a line is tested the day it is written), runs in
order through the installed ``bench`` command in a subprocess, from a folder that is not the checkout
(a user's project folder holding copies of ``recipes/`` and ``ensembles/``), at 80 columns, with a
cache of its own. In-process tests with the checkout on ``sys.path`` once hid five failures of these
lines (a glob matching a README, a worker pool that never started under ``pip install -e``, ...).

What the test adds to a line, it adds for time only, and says so in ``CASES``: a budget of seconds
(one epoch of two steps on two folds of four cars, in fp32 without timing the precisions), fewer
timing repeats, no ImageNet download (the quick profiles' ``auto`` weights set to ``none``). The
paths the README leaves to the user are small generated sets: ``/data/carvana`` in Carvana's layout
with its hq folders, ``/my/data`` the same images as a user's own set has them, without the
``train_hq/`` and ``test_hq/`` folders that only Carvana has. A line that cannot run here is in
``CASES`` with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(sys.executable).parent / "bench"  # what `make install` puts beside the venv's python
COLUMNS = 80

# One epoch of two optimizer steps on two folds of the quick profile's data, shrunk to 4 + 2 cars (32 test
# images: two chunks of the ensemble's test pass, so that it starts its two worker processes).
TINY_DATA = ["--set", "data.source.cars=4", "--set", "data.source.test_cars=2", "--set", "data.source.size=[96, 64]"]
# fp32 fixed, so no line spends seconds timing precisions (tests/test_compute_choice.py runs `auto` through bench run)
FIXED_COMPUTE = ["--set", "train.precision=fp32", "--set", "train.channels_last=false"]
# the quick profile's "auto" encoder weights would download ImageNet's where the network answers: tests stay offline
TINY_TRAINING = ["--set", "folds.k=2", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2",
                 "--set", "train.validate_images=8", "--set", "model.encoder_weights=none", *FIXED_COMPUTE]
TINY = TINY_DATA + TINY_TRAINING
# the faithful recipe's ImageNet encoder cannot be downloaded here
OFFLINE = ["--set", "model.encoder_weights=none", *FIXED_COMPUTE]


@dataclass(frozen=True)
class Case:
    """How the test runs one README line: what it appends, what the output must show, what must exist."""
    pattern: str  # a regular expression that the README line's command must match in full
    prints: str = ""  # a regular expression the line's stdout must contain
    writes: tuple[str, ...] = ()  # files, relative to the user's folder, that must exist after it
    append: list[str] = field(default_factory=list)
    cannot_run: str | None = None  # why this line cannot run here


CASES = [
    Case(r"bench run recipes/alexander\.toml --profile quick", r"alexander: out-of-fold Dice \d\.\d{4}", append=TINY),
    Case(r"bench run recipes/alexander\.toml --profile quick --set data\.root=/my/data --results mine",
         r"alexander: out-of-fold Dice \d\.\d{4} .* in mine/alexander-", append=TINY_TRAINING),
    Case(r"bench run recipes/alexander\.toml --set data\.root=/data/carvana --estimate", r"estimate: about",
         append=OFFLINE),
    Case(r"bench run recipes/alexander\.toml --set data\.root=/data/carvana --device cuda",
         cannot_run="needs a CUDA GPU: tools/gpu-check.sh runs the GPU path where one is lent"),
    Case(r"bench run recipes/alexander\.toml --set data\.root=/data/carvana --devices cuda:0,cuda:1,cuda:2",
         cannot_run="needs three GPUs: tests/test_distribute.py runs --devices cpu,cpu, tools/gpu-check.sh the GPUs lent"),
    Case(r"bench run recipes/alexander\.toml --profile quick --resume", r"alexander: out-of-fold Dice", append=TINY),
    Case(r"bench compare results/\*", r"OOF Dice"),
    Case(r"bench report results/\* --out report\.html", r"wrote report\.html \(\d+ runs\)", ("report.html",)),
    Case(r"bench predict results/<run> /data/carvana/test --out preds/", r"\d+ images in .* 0 skipped",
         ("preds/submission.csv.gz",)),
    Case(r"bench export results/<run> --out model-onnx/", r"exported 2 folds of alexander-.* matches PyTorch within",
         ("model-onnx/model.json", "model-onnx/fold0.onnx")),
    Case(r"bench predict model-onnx/ /data/carvana/test --out preds-onnx/", r"\d+ images in .* 0 skipped",
         ("preds-onnx/submission.csv.gz",)),
    Case(r"bench ensemble --check preds/submission\.csv\.gz --data /data/carvana", r"valid, \d+ test images, each once"),
    Case(r"bench ensemble results/\* --out ensemble/", r"images/s in 2 worker processes\)",
         ("ensemble/submission.csv.gz", "ensemble/ensemble.json")),
    Case(r"bench ensemble results/\* --search grid --out ensemble/", r"out-of-fold Dice \d\.\d+",
         ("ensemble/submission.csv.gz",)),
    Case(r"bench predict ensemble/ /data/carvana/test --out preds-ensemble/", r"ensemble of \d+ runs: \d+ images",
         ("preds-ensemble/submission.csv.gz",)),
    Case(r"bench ensemble ensembles/seed_merge\.toml --results results/seed",
         cannot_run="needs the nine runs that make seed-merge trains first (about 22 minutes here)"),
    Case(r"bench benchmark recipes/alexander\.toml --profile quick", r"written to results/benchmarks/alexander-",
         append=TINY_DATA + ["--repeats", "2", "--warmup", "1", "--workers", "0", "--skip", "overhead"]),
    Case(r"bench ablate recipes/alexander\.toml --profile quick --trick tta --trick hnm",
         r"wrote the alexander section of docs/ablations\.md \(3 variants\)", ("docs/ablations.md",), append=TINY),
    Case(r"bench tune recipes/alexander\.toml --profile quick --workers 2",
         r"wrote recipes/tuned/alexander-quick\.toml", ("recipes/tuned/alexander-quick.toml",),
         append=TINY + ["--set", "tune.trials=1"]),  # the space is checked; test_tune.py runs two workers
    Case(r"bench run recipes/alexander\.toml --profile quick --track mlflow", r"alexander: out-of-fold Dice",
         ("mlflow.db",), append=TINY),  # the first line's run, found complete: sent whole from its files
    Case(r"bench show recipes/vladimir\.toml --profile quick", r'name = "vladimir"'),
    Case(r"bench plugins", r"alexander"),
    Case(r"bench data synth --out my-set --cars 24 --size 240x160", r"wrote 48 images", ("my-set/train_masks.csv",),
         append=["--cars", "2", "--test-cars", "1", "--size", "96x64"]),
    Case(r"bench data check /data/carvana", r"96 training images of 6 cars .* 16 test images"),
    Case(r"bench data split /data/carvana --folds 5 --out splits\.json", r"5 folds", ("splits.json",)),
    Case(r"bench data split /data/carvana --method rank_mod_k --view 05 --out folds\.csv", r"id,fold row",
         ("folds.csv",)),
]


def readme_lines() -> list[str]:
    """The commands of the "Using it" block, comments cut, in order."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## Using it\n+```bash\n(.*?)^```", text, re.M | re.S)
    assert block, "README.md has no ```bash block under ## Using it"
    return [re.split(r"\s+#\s", line)[0].strip() for line in block[1].splitlines() if line.strip()]


def case_of(line: str) -> Case:
    matching = [case for case in CASES if re.fullmatch(case.pattern, line)]
    assert len(matching) == 1, (f"README line {line!r} matches {len(matching)} cases in tests/test_readme.py: "
                                "give it one, saying what it prints (or why it cannot run here)")
    return matching[0]


def test_every_readme_line_has_one_case_and_every_case_a_line():
    lines = readme_lines()
    for line in lines:
        case_of(line)
    stale = [case.pattern for case in CASES if not any(re.fullmatch(case.pattern, line) for line in lines)]
    assert not stale, f"cases for lines the README no longer has: {stale}"


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A user's project folder, not the checkout: the recipes and ensemble specs copied in."""
    folder = tmp_path_factory.mktemp("user")
    for name in ("recipes", "ensembles"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("tuned"))
    return folder


@pytest.fixture(scope="module")
def carvana_like(tmp_path_factory) -> Path:
    """``/data/carvana``: a set in Carvana's layout with its hq folders, 6 + 1 cars at 128x80."""
    from harness.data.synthetic import write_synthetic_carvana

    return write_synthetic_carvana(tmp_path_factory.mktemp("carvana") / "data", cars=6, test_cars=1, size=(128, 80),
                                   seed=3)


@pytest.fixture(scope="module")
def own_data(carvana_like, tmp_path_factory) -> Path:
    """``/my/data``: the same images as a user's own set has them, without Carvana's train_hq/ and test_hq/."""
    return Path(shutil.copytree(carvana_like, tmp_path_factory.mktemp("own") / "data", symlinks=True,
                                ignore=shutil.ignore_patterns("*_hq")))


def as_run(line: str, case: Case, folder: Path, carvana: Path, own: Path) -> list[str]:
    """The README line as the test types it: the user's paths filled in, the case's additions appended."""
    text = line.replace("/data/carvana", str(carvana)).replace("/my/data", str(own))
    if "<run>" in text:
        runs = sorted((folder / "results").glob("alexander-*"))
        assert len(runs) == 1, f"expected the first line's run in results/, found {runs}"
        text = text.replace("<run>", runs[0].name)
    words = shlex.split(text)
    assert words[0] == "bench"
    return [str(BENCH), *words[1:], *case.append]


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.exists(), reason=f"no installed bench command beside {sys.executable}: make install")
def test_the_readme_lines_run_in_order_as_typed(user_folder, carvana_like, own_data, tmp_path_factory):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COLUMNS", "SEGBENCH_CACHE")}
    env.update(COLUMNS=str(COLUMNS), SEGBENCH_CACHE=str(tmp_path_factory.mktemp("cache")), NO_ALBUMENTATIONS_UPDATE="1")
    for line in readme_lines():
        case = case_of(line)
        if case.cannot_run:
            continue
        command = as_run(line, case, user_folder, carvana_like, own_data)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=user_folder, env=env, capture_output=True, text=True, timeout=600)
        print(f"{time.perf_counter() - started:5.1f} s  {line}")  # with -s: where the test's time goes
        said = f"{shlex.join(command)}\nexit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        assert done.returncode == 0, said
        assert re.search(case.prints, done.stdout), f"expected /{case.prints}/ in the output of\n{said}"
        assert "Traceback" not in done.stderr, said
        assert "…" not in done.stdout, f"a cell cut at {COLUMNS} columns:\n{said}"
        missing = [path for path in case.writes if not (user_folder / path).is_file()]
        assert not missing, f"{line}: did not write {missing}\n{said}"
