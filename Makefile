# noisy-convnet: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install lock train test test-slurm test-all lint format data figures-cpu figures-real estimators-cpu estimators-mnist peers-mnist example-estimator bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

# The venv installs exactly the versions of requirements.lock (hashes checked), the package itself without
# resolving anything (its build backend, setuptools, is locked too). `pip install .` keeps pyproject's ranges.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) ## make .venv with the locked versions (requirements.lock) and the package (once)

# pip-tools, not uv: it resolves with pip itself, so it honours the machine's pip settings (its local wheel
# files, its torch cap) as `make install` does; uv looks at neither and would fetch a CUDA torch of 3 GB.
lock: $(STAMP) ## re-resolve requirements.lock to the newest versions pyproject.toml allows (recheck the numbers!)
	$(PY) -m pip install -q pip-tools
	$(PY) -m piptools compile -q --allow-unsafe --extra=cleanlab --extra=dev --generate-hashes --no-emit-find-links \
	  --no-emit-index-url --output-file=requirements.lock --strip-extras pyproject.toml

train: $(STAMP) ## the default run: mnist5k, random Q* at level 0.5, learned Q (28 s on 2 CPU cores, once installed)
	$(PY) train.py

# Tests run in parallel workers (pytest-xdist; TEST_JOBS=0 runs them in this process), one torch thread each.
TEST_JOBS ?= auto
PYTEST := $(PY) -m pytest -n $(TEST_JOBS) --maxprocesses 4 --dist worksteal
test: $(STAMP) ## the test suite, slow and SLURM tests left out (492 tests, 3 min 31 s in 2 workers on 2 idle CPU cores; 8 to 10 min beside a 2-worker training)
	$(PYTEST) -m "not slow and not slurm"

test-slurm: $(STAMP) ## the tests against a real SLURM (skipped, saying how, where none answers; scripts/slurm_local.sh; 7 tests, 2 min 47 s)
	$(PYTEST) -m "slurm and not slow"

test-all: $(STAMP) ## every test, the slow reproductions included
	$(PYTEST)

# No formatter: the code is wrapped by hand at 120 columns (dense signatures, continuation lines aligned with
# what they continue); ruff's linter guards the width, imports, whitespace and names. A formatter fought that
# wrapping in 228 places (# fmt: skip) and would spread those statements over some 500 more lines.
lint: $(STAMP) ## ruff's lint rules (width 120, imports, whitespace, names)
	$(PY) -m ruff check .

format: $(STAMP) ## ruff's automatic fixes (import order, ...)
	$(PY) -m ruff check --fix .

example-estimator: $(STAMP) ## run examples/my_estimator.py's ConfusionQ through train.py (ARGS='...' appended)
	$(PY) train.py q=custom q._target_=examples.my_estimator.ConfusionQ $(ARGS)

clean: ## remove run outputs (keeps outputs/figures)
	rm -rf outputs/runs outputs/multirun

CPU_PRESETS := fig2a_cpu fig2b_cpu fig3_cpu fig4a_cpu fig4b_cpu
# Fig. 2a/2b also draw the early-stopped plain net: one more command per preset, into the same sweep.
EARLY_STOPPED := fig2a_cpu fig2b_cpu
QUIET := logger=none trainer.enable_progress_bar=false
# Cells run in parallel, one per core with one torch thread each; LAUNCHER= runs them one after another.
LAUNCHER ?= hydra/launcher=joblib
FIGURE_ARGS ?=
SWEEP_SUFFIX ?=
FIGURES ?= outputs/figures
figures-cpu: $(STAMP) ## run the CPU-scale presets (cells in parallel; finished cells are skipped) and draw $(FIGURES)/
	for p in $(CPU_PRESETS); do $(PY) train.py experiment=$$p sweep=$${p}$(SWEEP_SUFFIX) $(QUIET) $(LAUNCHER) $(FIGURE_ARGS) || exit 1; done
	for p in $(EARLY_STOPPED); do $(PY) train.py experiment=$$p sweep=$${p}$(SWEEP_SUFFIX) q=none early_stopping=true $(QUIET) $(LAUNCHER) $(FIGURE_ARGS) || exit 1; done
	for p in $(CPU_PRESETS); do $(PY) -m noisy_convnet.report outputs/multirun/$${p}$(SWEEP_SUFFIX) --out "$(FIGURES)/$$p" || exit 1; done

DATA_ROOT ?=
# Quoted: a folder with spaces in its name is one argument
ROOT_ARG = $(if $(DATA_ROOT),"data.root=$(DATA_ROOT)")
FETCH := $(PY) -m noisy_convnet.fetch $(if $(DATA_ROOT),--root "$(DATA_ROOT)")
data: $(STAMP) ## fetch and md5-verify MNIST, Fashion-MNIST and CIFAR-N's labels into data.root (DATA_ROOT=..., default ~/.cache/noisy-convnet)
	$(FETCH) mnist fashion_mnist cifar10n cifar100n

figures-real: $(STAMP) ## Fig. 3 on full-size Fashion-MNIST (27 cells in parallel, resumable; about 76 min on 2 CPU cores), drawn in $(FIGURES)/fig3_fashion
	$(FETCH) fashion_mnist
	$(PY) train.py experiment=fig3_fashion $(QUIET) $(LAUNCHER) $(ROOT_ARG) $(FIGURE_ARGS)
	$(PY) -m noisy_convnet.report outputs/multirun/fig3_fashion --out "$(FIGURES)/fig3_fashion"

estimators-mnist: $(STAMP) ## every Q estimator on full MNIST at pair 0.45 (seed 0, resumable; about 83 min on 2 CPU cores), report in $(FIGURES)/estimators_mnist
	$(FETCH) mnist
	$(PY) train.py experiment=estimators_mnist $(QUIET) $(LAUNCHER) $(ROOT_ARG)
	$(PY) train.py experiment=estimators_mnist q=none early_stopping=true $(QUIET) $(LAUNCHER) $(ROOT_ARG)
	$(PY) -m noisy_convnet.report outputs/multirun/estimators_mnist --out "$(FIGURES)/estimators_mnist"

ESTIMATOR_PRESETS := estimators_uniform estimators_pair estimators_random estimators_instance
estimators-cpu: $(STAMP) ## every Q estimator x 5 noise settings x 3 seeds on MNIST-5k (cells in parallel), report in $(FIGURES)/estimators_cpu
	for p in $(ESTIMATOR_PRESETS); do $(PY) train.py experiment=$$p $(QUIET) $(LAUNCHER) || exit 1; done
	for p in $(ESTIMATOR_PRESETS); do $(PY) train.py experiment=$$p q=none early_stopping=true $(QUIET) $(LAUNCHER) || exit 1; done
	$(PY) -m noisy_convnet.report outputs/multirun/estimators_cpu --out "$(FIGURES)/estimators_cpu"

# The peers' own protocols on full MNIST beside the shared one (issue 28; docs/method.md, "The peers' protocols"):
# each part (PEERS=) is one protocol's sweep at the three settings below, resumable; SEEDS= chooses the seeds.
# Each protocol's sweep runs its estimator, anchor points, fixed Q* and the early-stopped plain net (q list in
# its preset); T-Revision's also its oracle start; the shared protocol's the four estimators (and T-Revision's
# oracle start), fixed Q* and both plain nets. The report joins this machine's cells and the committed report's
# runs (parts run on other machines); a run in both is read from its cell's folder (a warning if they differ).
PEERS ?= patrini volmin dualt trevision shared
PEER_SETTINGS := uniform:0.2 uniform:0.5 pair:0.45
SEEDS ?= 0,1,2
PEER_RUN = $(PY) train.py -m seed=$(SEEDS) $(QUIET) $(LAUNCHER) $(ROOT_ARG)
peers-mnist: $(STAMP) ## each peer's own MNIST protocol beside the shared one, in resumable parts (PEERS=, SEEDS=; about 20 h in all on 2 CPU cores: docs/results.md), report in $(FIGURES)/peers_mnist
	$(FETCH) mnist
	for p in $(PEERS); do for s in $(PEER_SETTINGS); do \
	  set -- $$(echo $$s | tr : ' '); at="experiment=protocol_$$p noise.matrix=$$1 level=$$2"; \
	  $(PEER_RUN) $$at || exit 1; \
	  if [ $$p = shared ]; then $(PEER_RUN) $$at q=none early_stopping=true || exit 1; fi; \
	  if [ $$p = shared ] || [ $$p = trevision ]; then $(PEER_RUN) $$at q=trevision q.start=true || exit 1; fi; \
	done; done
	$(PY) -m noisy_convnet.report outputs/multirun/peers_mnist $(wildcard $(FIGURES)/peers_mnist/runs.jsonl) --out "$(FIGURES)/peers_mnist"
