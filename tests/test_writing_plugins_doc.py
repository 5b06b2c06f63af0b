"""Runs docs/writing-plugins.md step by step, so the walk a plugin author follows keeps working.

The doc marks its steps with HTML comments: ``<!-- walk: file PATH -->`` before a code block writes
it to PATH; ``<!-- walk: run -->`` runs each line of the next block in a shell (``run, fails`` expects
exit code 2). The one liberty taken: ``pip install DIR`` installs into a private folder on
PYTHONPATH instead of the test environment, so the test leaves the environment as it found it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"<!-- walk: (?P<what>[^>]*?) -->\s*```\w*\n(?P<body>.*?)```", re.DOTALL)


def steps():
    return [(m["what"].strip(), m["body"]) for m in STEP.finditer((REPO / "docs/writing-plugins.md").read_text())]


def test_the_walk_runs(tmp_path):
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    site = tmp_path / "site"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    outputs = []
    assert len(steps()) >= 5
    for what, body in steps():
        if what.startswith("file "):
            path = tmp_path / what.removeprefix("file ")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            continue
        for line in filter(None, body.splitlines()):
            if line.startswith("pip install "):
                line = f"{sys.executable} -m pip install -q --no-deps --no-build-isolation --target {site} {line.removeprefix('pip install ')}"
                env["PYTHONPATH"] = str(site)
            done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            expected = 2 if what == "run, fails" else 0
            assert done.returncode == expected, f"{line}\n{done.stdout}\n{done.stderr}"
            outputs.append((line, done.stdout, done.stderr))

    listed_from_folder = next(out for line, out, _ in outputs if line.endswith("--plugins-dir my_plugins plugins"))
    assert "focal" in listed_from_folder and "my_plugins/focal.py" in listed_from_folder
    shown = next(out for line, out, _ in outputs if "gamma = 1.5" in line)
    assert 'name = "focal"' in shown and "gamma = 1.5" in shown
    typo = next(err for line, _, err in outputs if "gama" in line)
    assert "unknown key (did you mean 'gamma'?)" in typo and len(typo.strip().splitlines()) == 1
    installed = outputs[-1][1]
    assert "focal" in installed and "segbench-focal" in installed and "my_plugins" not in installed
