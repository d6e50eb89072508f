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
RUN     ?= outputs/demo/runs/tiny-$(TRAINER)
DATA    ?= outputs/demo/videos/manifest.jsonl

.PHONY: help setup demo test lint format local clean predict eval report

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

predict: setup ## answer DATA's questions with the model in RUN, into RUN/predictions.jsonl: make predict RUN=...
	$(VTT) predict --model $(RUN) --manifest $(DATA) --out $(RUN)/predictions.jsonl $(ARGS)

eval: setup ## score RUN's answers on DATA (BLEU, chrF, exact match): make eval RUN=... DATA=held-out.jsonl
	$(VTT) eval --model $(RUN) --data $(DATA) $(ARGS)

report: setup ## write RUN/report.html: loss and learning-rate curves, configs, sample predictions
	$(VTT) report $(RUN) $(ARGS)

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
