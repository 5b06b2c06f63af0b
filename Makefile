# make test / make demo create or refresh .venv themselves, so both work on a fresh clone.
# torch and torchvision are pinned: the CPU-only torch 2.13 wheel found on some machines has no
# torchvision that works with it. constraints.txt pins everything else for reproducible installs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
STAMP := $(VENV)/.installed-stamp
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test demo seed-merge ablations bench bench-baseline clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Two pytest workers (pytest-xdist), a module each at a time, one thread each: while one waits on a
# subprocess starting (torch's import, about 4 s) the other computes. With torch's AVX2 kernels forced
# the suite took 517 s so, against 576 s in one process of two threads (567 s for today's 887 tests; README).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

# The quick profile of each seed recipe on the built-in synthetic set, at half its 240 s of steps so that
# the three fit 15 minutes on an AVX2-only CPU (the built-in set is easy), and offline: random encoders
# where the quick profile would take ImageNet's wherever they can be downloaded. A finished run is not redone.
DEMO_BUDGET := 120
demo: $(STAMP)
	for recipe in vladimir alexander artsiom; do $(BENCH) run recipes/$$recipe.toml --profile quick \
		--set train.budget_seconds=$(DEMO_BUDGET) --set model.encoder_weights=none || exit 1; done

# The winning merge on the built-in data (ensembles/seed_merge.toml): nine quick runs on each recipe's
# own folds (vladimir, alexander's six configs, artsiom's two models), then the merge, into results/seed.
SEED := results/seed
SEED_RUN := $(BENCH) run --profile quick --profile own_folds --results $(SEED)
seed-merge: $(STAMP)
	$(SEED_RUN) recipes/vladimir.toml --name seed-vladimir
	for config in fma_noseed fma_s44 fma_s88 f04a_s44 f04a_clahe f04a_clahe_rmsprop; do \
		$(SEED_RUN) recipes/alexander.toml --profile $$config --name seed-alexander-$$config || exit 1; done
	$(SEED_RUN) recipes/artsiom.toml --name seed-artsiom
	$(SEED_RUN) recipes/artsiom_unet.toml --name seed-artsiom_unet
	$(BENCH) ensemble ensembles/seed_merge.toml --results $(SEED) --out $(SEED)/merge

# docs/ablations.md on today's quick profile: alexander's tricks, each switched alone (4 quick runs).
ablations: $(STAMP)
	$(BENCH) ablate recipes/alexander.toml --profile quick --trick tta --trick hnm --trick clahe \
		--results results/ablate --out docs/ablations.md

# Timings of the hot paths against the baseline saved on this kind of machine (fails on a >25% slowdown);
# make bench-baseline records a new one. Run on an otherwise idle machine.
BENCH_STORAGE := file://tests/benchmarks/baseline
bench: $(STAMP)
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-storage=$(BENCH_STORAGE) \
		--benchmark-compare --benchmark-compare-fail=mean:25%

bench-baseline: $(STAMP)
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-storage=$(BENCH_STORAGE) --benchmark-save=baseline

clean:
	rm -rf $(VENV) .pytest_cache
