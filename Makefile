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
# cpu runs use the reduced CPU schedule the experiment names (its `cpu_schedule:` key) unless
# SCHEDULE=paper or SCHEDULE=<name>; gpu runs use the paper's (experiments/schedule/*.yaml say
# what each one keeps and what it cuts). Every run starts from experiments/defaults.yaml.
EXP_YAML := experiments/$(EXP).yaml
CPU_SCHEDULE := $(shell sed -n 's/^cpu_schedule: *\([A-Za-z0-9_.-]*\).*/\1/p' $(EXP_YAML) 2>/dev/null)
SCHEDULE ?= $(if $(filter cpu,$(TRAINER)),$(CPU_SCHEDULE),paper)
EXPERIMENT_NAMES = $(filter-out defaults,$(basename $(notdir $(wildcard experiments/*.yaml))))
SCHEDULE_NAMES = $(basename $(notdir $(wildcard experiments/schedule/*.yaml)))
ifneq ($(filter train,$(MAKECMDGOALS)),)  # one-line errors, before anything is installed or run
  ifeq ($(wildcard $(EXP_YAML)),)
    $(error no experiment $(EXP_YAML); have: $(EXPERIMENT_NAMES))
  endif
  ifeq ($(SCHEDULE),)
    $(error $(EXP_YAML) names no cpu_schedule (one of: $(SCHEDULE_NAMES)); or SCHEDULE=paper)
  endif
  ifeq ($(filter paper $(SCHEDULE_NAMES),$(SCHEDULE)),)
    $(error no schedule experiments/schedule/$(SCHEDULE).yaml; have: paper $(SCHEDULE_NAMES))
  endif
endif
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
	@if [ -z "$(DATA)" ]; then $(MAKE) --no-print-directory data; fi
	$(VENV)/bin/wsiseg train --config $(EXP_YAML) $(DATA_CFG) \
	  --config experiments/trainer/$(TRAINER).yaml $(SCHEDULE_CFG) $(RESUME_ARG) $(ARGS)

STUDY ?= dmmn
.PHONY: study
study: install ## run experiments/studies/STUDY.yaml (experiments x seeds; skips finished runs, resumes killed ones), then its report; ARGS (e.g. --report)
	@test -f experiments/studies/$(STUDY).yaml || { echo "no study experiments/studies/$(STUDY).yaml; choose one of:"; ls experiments/studies/*.yaml | xargs -n1 basename | sed 's/.yaml$$//;s/^/  /'; exit 2; }
	@$(if $(filter tiger tiger_power,$(STUDY)),true,$(MAKE) --no-print-directory data)
	$(VENV)/bin/wsiseg study experiments/studies/$(STUDY).yaml $(ARGS)

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
