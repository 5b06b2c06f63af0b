"""What one trial's bookkeeping costs in a study storage: what a bench tune worker does per trial
besides training (count the budget under the lock, ask, tag the trial, beat the heartbeat, tell),
timed over many empty trials. For docs/tuning.md's PostgreSQL-against-SQLite figure.

    python tools/tune_bookkeeping.py STORAGE [STORAGE ...] [--trials N]

STORAGE as bench tune --storage takes it (sqlite:///path.db, postgresql://user:password@host/db).
Each storage gets a fresh study named bookkeeping-<time>.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna
import torch

from harness.tune import study as studies

optuna.logging.set_verbosity(optuna.logging.WARNING)


def per_trial_ms(url: str, trials: int) -> float:
    place = studies.StudyPlace(f"bookkeeping-{time.time_ns()}", Path(tempfile.mkdtemp()), url)
    storage = place.storage()
    study = optuna.create_study(study_name=place.name, storage=storage, direction="maximize")
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    started = time.perf_counter()
    for _ in range(trials):
        with studies.budget_lock(study):
            optuna.storages.fail_stale_trials(study)
            studies.counted_trials(study)
            trial = study.ask(distributions)
            trial.set_user_attr("worker", studies.this_worker(place))
        trial.set_user_attr("run", "run-folder-name")
        storage.record_heartbeat(trial._trial_id)
        study.tell(trial, 0.5)
    return 1000 * (time.perf_counter() - started) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storages", nargs="+")
    parser.add_argument("--trials", type=int, default=100)
    options = parser.parse_args()
    for url in options.storages:
        shown = studies.StudyPlace("", Path("."), url).storage_text
        print(f"{shown}: {per_trial_ms(url, options.trials):.1f} ms a trial over {options.trials} trials "
              f"(cpu capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
