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
# RESUME=1: continue EXP's latest run (its newest last*.ckpt) in its own run folder
RESUME ?=
RESUME_ARG := $(if $(filter 1 yes true,$(RESUME)),--ckpt_path last,)
# cpu runs use the method family's reduced CPU schedule unless SCHEDULE=paper; gpu runs use the
# paper's (experiments/schedule/*.yaml say what each one keeps and what it cuts)
CPU_SCHEDULE := $(strip $(if $(filter dmmn_%,$(EXP)),cpu_budget,\
  $(if $(filter razn%,$(EXP)),razn_cpu,\
  $(if $(filter smp_% unet_bach,$(EXP)),cpu_budget_smp,cpu_budget_refinenet))))
SCHEDULE ?= $(if $(filter cpu,$(TRAINER)),$(CPU_SCHEDULE),paper)
DATA_CFG := $(if $(DATA),--config experiments/data/$(DATA).yaml,)
SCHEDULE_CFG := $(if $(filter-out paper,$(SCHEDULE)),--config experiments/schedule/$(SCHEDULE).yaml,)

.DEFAULT_GOAL := help
.PHONY: help install test test-full data train compare bench gpu-check lint clean

help: ## list the targets
	@echo "usage: make TARGET [EXP=dmmn_m3] [DATA=...] [TRAINER=cpu|gpu|ddp_cpu] [RESUME=1] [ARGS=...]"
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

train: install ## fit + test EXP (default dmmn_m3) on DATA (default: synthetic); TRAINER, SCHEDULE, ARGS, RESUME=1
	@test -f experiments/$(EXP).yaml || { echo "no experiment experiments/$(EXP).yaml; choose one of:"; ls experiments/*.yaml | xargs -n1 basename | sed 's/.yaml$$//;s/^/  /'; exit 2; }
	@if [ -z "$(DATA)" ]; then $(MAKE) --no-print-directory data; fi
	$(VENV)/bin/wsiseg train --config experiments/$(EXP).yaml $(DATA_CFG) \
	  --config experiments/trainer/$(TRAINER).yaml $(SCHEDULE_CFG) $(RESUME_ARG) $(ARGS)

RUNS ?= runs
compare: install ## table + bar plot of finished runs under RUNS (default: runs/) -> comparison.*
	$(VENV)/bin/wsiseg compare $(RUNS) --out $(RUNS)/comparison --overwrite

bench: install ## read / decode / whole-slide benchmarks on a 16k² synthetic slide (docs/benchmarks.md)
	$(PY) -m benchmarks.run

gpu-check: install ## on a GPU machine: each family fits in bf16, DMMN-M3 segments 16k² (<= 6 min); ARGS=--dry-run on a CPU
	$(PY) -m benchmarks.gpu_check $(ARGS)

lint: install ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove caches (keeps .venv, data and runs)
	rm -rf .pytest_cache .ruff_cache **/__pycache__
