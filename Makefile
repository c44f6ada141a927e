# winft_lightning: `make install` then `make test`. Everything runs inside .venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 2

.PHONY: install data slurm browser test test-slurm lint format bench run study study-quick study-claims study-trained study-paper-grid clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -e 's/:.*## /\t/'

install:  ## create .venv, install the package with dev extras, the offline data, SLURM and Chromium (root)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet --progress-bar off -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, timm, lightning, torchmetrics, webdataset, hydra, wandb; print('stack ok: torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
	@bash scripts/install_data.sh
	@bash scripts/install_slurm.sh
	@bash scripts/install_browser.sh

data:  ## install the offline datasets only
	@bash scripts/install_data.sh

slurm:  ## install SLURM and munge only (Debian packages; the SLURM tests' one-node cluster)
	@bash scripts/install_slurm.sh

browser:  ## install Chromium and its driver only (Debian packages; the explorer's browser tests)
	@bash scripts/install_browser.sh

lint:  ## ruff lint + format check
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format:  ## ruff autofix + format
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

test: lint  ## lint, then the whole test suite (the SLURM tests' one-node cluster included)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q --durations=15

test-slurm:  ## the SLURM tests alone, on the one-node cluster they start (root)
	$(PY) -m pytest -q --durations=10 tests/cluster/test_slurm.py tests/cluster/test_slurm_launch.py

bench:  ## benchmarks -> outputs/bench/bench_<date>.json
	$(PY) -m bench

run:  ## the main job: python -m winft_lightning
	$(PY) -m winft_lightning

study:  ## the paper's study (Hydra multirun + report)
	$(PY) -m winft_lightning.study

study-quick:  ## a smoke of the whole study: both families, every arm once (14.8 min on 2 cores)
	$(PY) -m winft_lightning.study study=quick

study-claims:  ## the training-free claims alone: K = 5 teachers a family (default, local), claims passes and the null
	$(PY) -m winft_lightning.study study=claims

study-trained:  ## the trained comparisons alone: 9 arms x 4 seeds, masks from the local family's claims teachers 0 and 1
	$(PY) -m winft_lightning.study study=trained

study-paper-grid:  ## the training-free claims at N = 196 (28 px, patch 2), K = 3 teachers a family (default, local)
	$(PY) -m winft_lightning.study study=paper_grid

clean:  ## remove run outputs (not the venv)
	rm -rf outputs multirun
