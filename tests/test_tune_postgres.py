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

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from wsgiref.util import setup_testing_defaults

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


@dataclass(frozen=True)
class TwoHosts:
    storage: str  # the SQLAlchemy URL the tests open the study with
    folder: Path
    killed_trial: int
    host_b: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def two_hosts(postgres, tune_set, tiny_recipe, tmp_path_factory) -> TwoHosts:
    """Host a runs the baseline and is killed (SIGKILL) in its second trial; host b, started then,
    spends the rest of the study's budget of 3 trials."""
    if not BENCH.exists():
        pytest.skip(f"no installed bench command beside {sys.executable}: make install")
    folder = tmp_path_factory.mktemp("two_hosts")
    recipe = tiny_recipe(folder / "tiny.toml", tune_set, epochs=1, extra=TUNE)
    host_a = subprocess.Popen(_tune(recipe, postgres, "host-a", folder / "a", folder / "tuned"), env=_environment(),
                              cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list((folder / "a" / "tune" / "shared").glob("tiny-*/fold-0"))) < 2:  # a fold of trial 2 started
        assert host_a.poll() is None and time.monotonic() < deadline, host_a.stdout.read() if host_a.stdout else ""
        time.sleep(0.1)
    os.killpg(host_a.pid, signal.SIGKILL)
    host_a.wait()
    storage = _psycopg_url(postgres)
    running = [t for t in optuna.load_study(study_name="shared", storage=storage).get_trials()
               if t.state == TrialState.RUNNING]
    assert [t.user_attrs["worker"].partition(":")[0] for t in running] == ["host-a"]
    host_b = subprocess.run(_tune(recipe, postgres, "host-b", folder / "b", folder / "tuned"), env=_environment(),
                            cwd=folder, capture_output=True, text=True, timeout=300)
    return TwoHosts(storage, folder, running[0].number, host_b)


def test_two_hosts_spend_the_budget_exactly_and_retry_a_killed_hosts_trial(two_hosts):
    """The dead host's trial is failed by the heartbeat and retried by the other, and the study ends
    with exactly the budget's 3 complete trials, as one process would."""
    host_b = two_hosts.host_b
    assert host_b.returncode == 0, host_b.stdout + host_b.stderr
    assert PASSWORD not in host_b.stdout + host_b.stderr, "the password was printed"
    trials = optuna.load_study(study_name="shared", storage=two_hosts.storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3, [(t.number, t.state) for t in trials]
    killed = next(t for t in trials if t.number == two_hosts.killed_trial)
    assert killed.state == TrialState.FAIL
    retry = next(t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number)
    assert retry.params == killed.params and retry.user_attrs["worker"].startswith("host-b:")
    assert (two_hosts.folder / "tuned" / "shared.toml").is_file() and "best trial" in host_b.stdout
    best = max(complete, key=lambda t: t.value)
    assert any((two_hosts.folder / host / "tune" / "shared" / best.user_attrs["run"] / "summary.json").is_file()
               for host in ("a", "b")), "the best trial's run folder is on one of the hosts"


def test_the_dashboard_finds_the_study(two_hosts):
    """optuna-dashboard's own server (its WSGI app, called without a socket) lists the trials."""
    from optuna_dashboard import wsgi

    app = wsgi(optuna.storages.RDBStorage(two_hosts.storage))

    def get(path: str) -> dict:
        environ: dict = {"PATH_INFO": path, "wsgi.input": io.BytesIO()}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda code, headers, *_: status.append(code)))
        assert status[0].startswith("200"), (path, status, body[:200])
        return json.loads(body)

    studies = {study["study_name"]: study for study in get("/api/studies")["study_summaries"]}
    detail = get(f"/api/studies/{studies['shared']['study_id']}")
    assert sorted(trial["state"] for trial in detail["trials"]) == ["Complete"] * 3 + ["Fail"]


def test_a_study_name_another_recipe_uses_is_refused(postgres, two_hosts, synthetic_set, tiny_recipe, tmp_path, bench):
    other = tiny_recipe(tmp_path / "other.toml", synthetic_set, extra=TUNE)
    failed = bench("tune", other, "--storage", postgres, "--study", "shared", "--results", tmp_path / "r")
    assert failed.code == 2 and "study 'shared'" in failed.err and "different recipe" in failed.err
    assert len(failed.err.strip().splitlines()) == 1 and PASSWORD not in failed.err


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


def test_a_postgresql_url_without_the_driver_names_the_extra(synthetic_set, tiny_recipe, tmp_path, bench, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    recipe = tiny_recipe(tmp_path / "tiny.toml", synthetic_set, extra=TUNE)
    failed = bench("tune", recipe, "--storage", "postgresql://someone@db.example/studies", "--results", tmp_path / "r")
    assert failed.code == 2 and "pip install segbench[postgres]" in failed.err
    assert len(failed.err.strip().splitlines()) == 1
