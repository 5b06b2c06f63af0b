"""``bench report``: a self-contained page whose figures and overlays really render in a browser."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.evaluate.report import overlay, pareto_front

FIGURES = ("leaderboard", "learning-curves", "dice-vs-throughput", "per-fold", "worst-images")
CHROMIUM = shutil.which("chromium")
# Appended to a copy of the page: once everything has loaded, write what each figure's images
# decoded to into the DOM, where --dump-dom can read it.
PROBE = """<script>window.addEventListener("load", () => {
  const found = [...document.querySelectorAll("figure")].map(f =>
    [f.id, [...f.querySelectorAll("img")].map(i => [i.complete, i.naturalWidth, i.naturalHeight])]);
  const out = document.createElement("pre"); out.id = "probe"; out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});</script></body>"""


@pytest.fixture(scope="module")
def page(tiny_runs, tmp_path_factory) -> Path:
    from harness.evaluate.report import write_report
    from harness.evaluate.results import scan

    out = tmp_path_factory.mktemp("report") / "report.html"
    index = scan([str(tiny_runs[name]) for name in ("linknet", "unet", "fpn")], Path("results"))
    return write_report(index.complete, out, worst=3)


def _embedded_png(html: str, figure: str) -> Image.Image:
    section = html.split(f'<figure id="{figure}">', 1)[1]
    encoded = re.search(r'src="data:image/png;base64,([^"]+)"', section).group(1)
    return Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")


def test_cli_writes_the_page(bench, tiny_runs, tmp_path):
    out = tmp_path / "report.html"
    result = bench("report", tiny_runs["linknet"], tiny_runs["unet"], "--out", out, "--worst", "2")
    assert result.code == 0, result.err
    assert "wrote" in result.out and out.stat().st_size > 10_000


def test_page_is_self_contained_with_every_figure(page):
    html = page.read_text()
    for figure in FIGURES:
        assert f'<figure id="{figure}">' in html
    assert html.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(https?:)?//', html), "nothing may be fetched from a network"
    for run in ("linknet", "unet", "fpn"):
        assert run in html


def test_overlays_show_ground_truth_against_prediction(page):
    grid = np.asarray(_embedded_png(page.read_text(), "worst-images")).reshape(-1, 3).astype(int)
    # Two epochs of training leave both kinds of error on the worst images: red and blue pixels.
    red = (grid[:, 0] > 180) & (grid[:, 1] < 90) & (grid[:, 2] < 90)
    blue = (grid[:, 2] > 180) & (grid[:, 0] < 90)
    assert red.sum() > 50 and blue.sum() > 50


def test_report_on_runs_of_other_folds_marks_what_does_not_compare(bench, tiny_runs, tmp_path):
    out = tmp_path / "r.html"
    result = bench("report", tiny_runs["linknet"], tiny_runs["other_splits"], "--out", out, "--worst", "1")
    assert result.code == 0, result.err
    page = html.unescape(out.read_text())
    assert "folds mean ± std †" in page and "† splits differ: linknet on splits" in page
    assert "splits differ (see the leaderboard)" in page
    assert "fold K holds other cars in each run" in page


def test_report_refuses_runs_on_different_data(bench, tiny_runs, other_data_run, tmp_path):
    result = bench("report", tiny_runs["linknet"], other_data_run, "--out", tmp_path / "r.html")
    assert result.code == 2 and "cannot rank runs on different data" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")
def test_page_renders_in_headless_chromium(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=60).stdout
    decoded = dict(json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1)))
    assert list(decoded) == list(FIGURES)
    for figure in FIGURES[1:]:
        (complete, width, height), = decoded[figure]
        assert complete and width > 400 and height > 200, figure

    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=60, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1400)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the screenshot shows plots, not a blank page"


def test_pareto_front_keeps_the_runs_no_other_run_beats_on_both_axes():
    speed = np.array([10.0, 20.0, 15.0, 20.0])
    dice = np.array([0.99, 0.95, 0.94, 0.90])
    assert pareto_front(speed, dice).tolist() == [True, True, False, False]


def test_overlay_colours_errors_and_leaves_the_background_dimmed():
    image = np.full((1, 4, 3), 200, np.uint8)
    truth = np.array([[1, 1, 0, 0]])
    prediction = np.array([[1, 0, 1, 0]])
    agree, missed, added, background = overlay(image, truth, prediction)[0].astype(int)
    assert agree[1] > agree[0] and agree[1] > agree[2]
    assert missed[2] > missed[0] and added[0] > added[2]
    assert (background == 120).all()
