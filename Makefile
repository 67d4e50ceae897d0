# mixpipe: two commands on a fresh machine with Python 3.11+ —
#   make repro   set up .venv, then run the whole DVC pipeline on the bundled dataset
#   make test    set up .venv, then run every test (Ray ones inside a private network namespace)

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel; installed first and pinned, so pip never resolves a CUDA torch for the project.
TORCH := torch==2.13.0
PYTEST_ARGS ?=
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup repro test unit bench clean-run-state

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mixpipe needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

# dvc runs each stage as `python -m stages.<name>`: the venv's python must come first on PATH.
repro: setup
	PATH="$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/python tools/netns.py -- env PATH="$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

bench: setup
	for script in benchmarks/bench_*.py; do $(BIN)/python tools/netns.py -- env PATH="$(BIN):$$PATH" $(BIN)/python $$script || exit 1; done

clean-run-state:
	rm -rf .mixpipe
