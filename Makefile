# wsiseg — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
DATA_DIR ?= data/synthetic
EXP ?= dmmn_m3
DATA ?=
TRAINER ?= cpu
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-full data lint clean

help: ## list the targets
	@echo "usage: make TARGET [EXP=dmmn_m3] [DATA=...] [TRAINER=cpu|gpu|ddp_cpu] [ARGS=...]"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install wsiseg + dev tools (quick when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# elasticdeform's wheel is built against NumPy 1.x: build it from source against NumPy 2
	$(PY) -m pip install -q --disable-pip-version-check --no-binary elasticdeform -e '.[dev]'
	@touch $(STAMP)

test: install ## fast tests (not marked slow; ~minutes on 2 cores)
	$(PY) -m pytest -m "not slow" -q

test-full: install ## all tests, including slow DDP/training runs
	$(PY) -m pytest -q

data: install ## generate the synthetic benchmark slides (reused when present)
	$(VENV)/bin/wsiseg synth --out $(DATA_DIR)

lint: install ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove caches (keeps .venv, data and runs)
	rm -rf .pytest_cache .ruff_cache **/__pycache__
