# vtt — every user command is a target here; `make help` lists them. Targets are thin wrappers
# over `vtt` subcommands (README.md documents both).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    ?= .venv
VTT     := $(VENV)/bin/vtt
TRAINER ?= llava
GPUS    ?= 1
NODES   ?= 1
CONFIG  ?= jobs/$(TRAINER).yaml
ARGS    ?=

.PHONY: help setup demo test lint format local prepare clean

help: ## list every target
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The install is redone only when pyproject.toml changes: the stamp file records the last one.
$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

setup: $(VENV)/.installed ## create .venv and install vtt with its test extras (quick when nothing changed)

demo: setup ## train both tiny models here on synthetic videos and print their losses
	$(VTT) demo $(ARGS)

local: setup ## run jobs/$(TRAINER).yaml here with the deepspeed launcher: make local TRAINER=llava GPUS=1
	$(VTT) run --config $(CONFIG) --gpus $(GPUS) $(ARGS)

MANIFEST ?= data/manifest.jsonl
OUT      ?= data/prepared-$(TRAINER)
prepare: setup ## decode videos once into a dataset: make prepare MANIFEST=data/manifest.jsonl TRAINER=llava [ARGS="--frames 8"]
	$(VTT) prepare --manifest $(MANIFEST) --out $(OUT) --trainer $(TRAINER) $(ARGS)

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: setup ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

test: setup lint ## install what is missing and run the whole test suite
	$(VENV)/bin/pytest $(ARGS)

clean: ## remove outputs/ and rendered jobs (keeps .venv)
	rm -rf outputs jobs/rendered
