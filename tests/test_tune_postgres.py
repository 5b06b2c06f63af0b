"""`bench tune` on a real PostgreSQL: two hosts on one study, a host killed mid-trial, the dashboard,
and one line for every way a database URL can be wrong.

The server is Debian's PostgreSQL, started by the ``postgres`` fixture in a folder of its own with
``initdb`` and ``pg_ctl`` (not pytest-postgresql: it runs the same two programs, and would still need
the user switch below). PostgreSQL refuses to run as root, and the tests run as root on CI, so the
server runs as the ``postgres`` user that the package creates. Where PostgreSQL is not installed the
tests skip, naming the package; ``.ci/run`` installs it.

Two hosts are two ``bench tune`` processes with their own ``--results`` folders (so no file lock of
one host covers the other) and their own ``--host`` names, on one ``--storage`` URL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

BENCH = Path(sys.executable).parent / "bench"
PASSWORD = "s3cret"
TUNE = """
[tune]
trials = 3
sampler = "random"
pruner = "none"
[tune.space]
"optimizer.lr" = { type = "float", low = 1e-4, high = 3e-3, log = true }
"""


def _postgres_programs() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or where Debian's postgresql package puts them."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> str:
    """A PostgreSQL server of this module's own, with a role ``segbench`` (password) owning a database
    ``studies``; yields ``postgresql://segbench:...@127.0.0.1:PORT/studies`` and drops the server after."""
    programs = _postgres_programs()
    if programs is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="segbench-postgres-"))
    if os.geteuid() == 0:  # initdb and postgres refuse root
        try:
            import pwd
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres user to run PostgreSQL as (Debian's postgresql package creates it)")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()

    def run(*command):
        subprocess.run([*as_postgres, *map(str, command)], check=True, capture_output=True, timeout=120)

    run(programs / "initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256")
    run(programs / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
    try:
        for statement in (f"CREATE ROLE segbench LOGIN PASSWORD '{PASSWORD}'", "CREATE DATABASE studies OWNER segbench"):
            run(programs / "psql", "-h", folder, "-p", port, "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c", statement)
        yield f"postgresql://segbench:{PASSWORD}@127.0.0.1:{port}/studies"
    finally:
        run(programs / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _tune(recipe: Path, storage: str, host: str, results: Path, tuned: Path, *extra: str) -> list[str]:
    return [str(BENCH), "tune", str(recipe), "--storage", storage, "--study", "shared", "--host", host,
            "--heartbeat-grace", "6", "--results", str(results), "--tuned", str(tuned), *extra]


def _environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "80"}


def _psycopg_url(storage: str) -> str:
    return storage.replace("postgresql://", "postgresql+psycopg://")


@pytest.mark.skipif(not BENCH.exists(), reason=f"no installed bench command beside {sys.executable}: make install")
def test_two_hosts_spend_the_budget_exactly_and_retry_a_killed_hosts_trial(postgres, tune_set, tiny_recipe, tmp_path):
    """Host a runs the baseline and is killed (SIGKILL) in its second trial; host b, started then,
    spends the rest of the budget: the dead host's trial is failed by the heartbeat and retried, and
    the study ends with exactly the budget's 3 complete trials, as one process would."""
    recipe = tiny_recipe(tmp_path / "tiny.toml", tune_set, epochs=2, extra=TUNE)
    tuned = tmp_path / "tuned"
    host_a = subprocess.Popen(_tune(recipe, postgres, "host-a", tmp_path / "a", tuned), env=_environment(),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    storage = _psycopg_url(postgres)
    deadline = time.monotonic() + 300
    while True:  # until host a is inside its second trial: a fold of it has started
        assert host_a.poll() is None and time.monotonic() < deadline, host_a.stdout.read() if host_a.stdout else ""
        folders = list((tmp_path / "a" / "tune" / "shared").glob("tiny-*/fold-0"))
        if len(folders) == 2:
            break
        time.sleep(0.1)
    os.killpg(host_a.pid, signal.SIGKILL)
    host_a.wait()
    running = [t for t in optuna.load_study(study_name="shared", storage=storage).get_trials()
               if t.state == TrialState.RUNNING]
    assert [t.user_attrs["worker"].partition(":")[0] for t in running] == ["host-a"]

    host_b = subprocess.run(_tune(recipe, postgres, "host-b", tmp_path / "b", tuned), env=_environment(),
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert host_b.returncode == 0, host_b.stdout + host_b.stderr
    assert PASSWORD not in host_b.stdout + host_b.stderr, "the password was printed"
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3, [(t.number, t.state) for t in trials]
    killed = next(t for t in trials if t.number == running[0].number)
    assert killed.state == TrialState.FAIL
    retry = next(t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number)
    assert retry.params == killed.params and retry.user_attrs["worker"].startswith("host-b:")
    assert (tuned / "shared.toml").is_file() and "best trial" in host_b.stdout
    best = max(complete, key=lambda t: t.value)
    assert any((tmp_path / host / "tune" / "shared" / best.user_attrs["run"] / "summary.json").is_file()
               for host in ("a", "b")), "the best trial's run folder is on one of the hosts"


def test_the_dashboard_finds_the_study(postgres, tune_set, tiny_recipe, tmp_path, bench):
    """optuna-dashboard's own server (its WSGI app, called without a socket) lists the trials."""
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    recipe = tiny_recipe(tmp_path / "tiny.toml", tune_set, extra=TUNE.replace("trials = 3", "trials = 1"))
    result = bench("tune", recipe, "--storage", postgres, "--study", "dashboard", "--results", tmp_path / "r",
                   "--tuned", tmp_path / "tuned")
    assert result.code == 0, result.err
    app = wsgi(optuna.storages.RDBStorage(_psycopg_url(postgres)))

    def get(path: str) -> dict:
        environ: dict = {"PATH_INFO": path, "wsgi.input": io.BytesIO()}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda code, headers, *_: status.append(code)))
        assert status[0].startswith("200"), (path, status, body[:200])
        return json.loads(body)

    studies = {study["study_name"]: study for study in get("/api/studies")["study_summaries"]}
    assert "dashboard" in studies
    detail = get(f"/api/studies/{studies['dashboard']['study_id']}")
    assert [trial["state"] for trial in detail["trials"]] == ["Complete"]


@pytest.mark.parametrize("change, message", [
    (lambda url: url.replace(f":{PASSWORD}@", ":wrong@"), "password authentication failed"),
    (lambda url: url.rsplit("/", 1)[0] + "/nosuchdb", 'database "nosuchdb" does not exist'),
    (lambda url: re.sub(r":\d+/", f":{_free_port()}/", url), "Connection refused"),  # no server there
])
def test_a_database_url_that_cannot_open_is_one_line(postgres, synthetic_set, tiny_recipe, tmp_path, bench, change,
                                                      message):
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=TUNE)
    failed = bench("tune", recipe, "--storage", change(postgres), "--results", tmp_path / "r")
    assert failed.code == 2 and "cannot open" in failed.err and message in failed.err, failed.err
    assert len(failed.err.strip().splitlines()) == 1 and PASSWORD not in failed.err and "wrong" not in failed.err


def test_a_study_name_another_recipe_uses_is_refused(postgres, synthetic_set, tiny_recipe, tmp_path, bench):
    first = tiny_recipe(tmp_path / "first.toml", synthetic_set, extra=TUNE.replace("trials = 3", "trials = 1"))
    assert bench("tune", first, "--storage", postgres, "--study", "taken", "--results", tmp_path / "r",
                 "--tuned", tmp_path / "tuned").code == 0
    other = tiny_recipe(tmp_path / "other.toml", synthetic_set, extra=TUNE.replace("1e-4", "2e-4"))
    failed = bench("tune", other, "--storage", postgres, "--study", "taken", "--results", tmp_path / "r2")
    assert failed.code == 2 and "study 'taken'" in failed.err and "different recipe" in failed.err
    assert len(failed.err.strip().splitlines()) == 1 and PASSWORD not in failed.err


def test_a_postgresql_url_without_the_driver_names_the_extra(synthetic_set, tiny_recipe, tmp_path, bench, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=TUNE)
    failed = bench("tune", recipe, "--storage", "postgresql://someone@db.example/studies", "--results", tmp_path / "r")
    assert failed.code == 2 and "pip install segbench[postgres]" in failed.err
    assert len(failed.err.strip().splitlines()) == 1
