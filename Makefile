# fracture_lib: every command a user needs. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The interpreter that creates the virtual environment (Python 3.11).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
KERNEL_NAME := fracture

# Report parameters; empty means "as in the parameter file" (params.yaml, or PARAMS on top of it).
PARAMS ?=
PARTS ?=
EPOCHS ?=
DATA_DIR ?=
ARCH ?=
WEIGHTS ?=
IMG_SIZE ?=
BATCH_SIZE ?=
RUN_NAME ?=
ONLY ?=
WORKERS ?=
# Every training setting a preset sets is a variable too, passed as --set name=value
# (LEARNING_RATE=0.001 gives --set learning_rate=0.001).
RECIPE_VARIABLES := LEARNING_RATE OPTIMIZER WEIGHT_DECAY SCHEDULE WARMUP_EPOCHS PATIENCE EMA_MOMENTUM LOSS \
	FOCAL_GAMMA DROPOUT_RATE FLIP ROTATION_DEGREES ZOOM TRANSLATE BRIGHTNESS CONTRAST GAMMA POOL_PARTS TTA CLAHE \
	SEED SPLIT_SEED AGGREGATION THRESHOLD_METHOD N_BOOTSTRAP PRECISION JIT_COMPILE AUGMENT_ON LR_SCALING \
	BOX_LOSS_WEIGHT HEAD TRAIN_CROP
lowercase = $(shell echo '$(1)' | tr '[:upper:]' '[:lower:]')
REPORT_ARGS := $(if $(PARAMS),--params "$(PARAMS)") $(if $(PARTS),--parts "$(PARTS)") $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(DATA_DIR),--data-dir "$(DATA_DIR)") $(if $(ARCH),--arch $(ARCH)) \
	$(if $(WEIGHTS),--weights "$(WEIGHTS)") $(if $(IMG_SIZE),--img-size $(IMG_SIZE)) \
	$(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) $(if $(RUN_NAME),--run-name $(RUN_NAME)) \
	$(if $(ONLY),--only $(ONLY)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(foreach name,$(RECIPE_VARIABLES),$(if $($(name)),--set "$(call lowercase,$(name))=$($(name))"))
PYTEST_ARGS ?=

.PHONY: help .venv test reports bench bench-gpu bench-scale lab demo-data clean distclean

help: ## Show this list of commands
	@echo "Usage: make <command> [VARIABLE=value ...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_.-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Report variables: PARAMS=params/real-cpu.yaml PARTS=\"elbow hand\" EPOCHS=5 DATA_DIR=data ARCH=densenet169 WEIGHTS=imagenet"
	@echo "  IMG_SIZE=320 BATCH_SIZE=16 RUN_NAME=name ONLY=01_data_exploration WORKERS=1, and the training settings"
	@echo "  $(RECIPE_VARIABLES)"

$(VENV_STAMP): pyproject.toml
	@test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install --quiet -e '.[dev]'
	$(VENV_PYTHON) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python ($(KERNEL_NAME))"
	@touch $(VENV_STAMP)

.venv: $(VENV_STAMP) ## Create the virtual environment in .venv/ (re-run when pyproject.toml changes)

test: .venv ## Run the test suite (library tests and every notebook on a tiny synthetic set)
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

reports: .venv ## Run all notebooks headlessly and write HTML reports to reports/ (demo data when data/MURA-v1.1 is absent)
	$(VENV_PYTHON) -m fracture_lib reports $(REPORT_ARGS)

bench: .venv ## Measure input-pipeline, training and scoring speed (reports/benchmarks.json)
	$(VENV_PYTHON) -m fracture_lib bench

bench-gpu: .venv ## Measure GPU training: DenseNet-169, float32 vs mixed precision, XLA (reports/benchmarks-gpu.json)
	$(VENV_PYTHON) -m fracture_lib bench --gpu $(if $(DATA_DIR),--data "$(DATA_DIR)")

MURA_CSV ?= ../shared/mura-v1.1-csv
bench-scale: .venv ## Time and peak memory against size up to MURA's 40,005 films (reports/benchmarks-scale.json)
	@test -d data/mura-scale/MURA-v1.1 || $(VENV_PYTHON) -m fracture_lib demo-data data/mura-scale --layout-from "$(MURA_CSV)"
	$(VENV_PYTHON) -m fracture_lib bench --scale --data data/mura-scale

lab: .venv ## Open JupyterLab on the notebooks with the project kernel
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

demo-data: .venv ## Generate the synthetic MURA-layout demo dataset in data/demo/
	$(VENV_PYTHON) -m fracture_lib demo-data

clean: ## Remove generated reports, caches and the demo set (keeps models/ and .venv/)
	rm -rf reports/*.html reports/executed reports/metrics reports/benchmarks*.json data/cache data/demo .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## Also remove trained models and the virtual environment
	rm -rf models $(VENV)
