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
DS      ?=


.PHONY: help setup system demo test test-fast lint format local check render submit push merge prepare clean predict eval report image sif push-image stage nccl-check
# Containers: the image is named after the package version, so the SIF and a pushed tag say what they hold.
VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE      ?= vtt:$(VERSION)
REGISTRY   ?=
DOCKER     ?= docker
APPTAINER  ?= apptainer
CUDA_IMAGE ?=
ARCHS      ?=
CACHE      ?=

RUN     ?= outputs/demo/runs/tiny-$(TRAINER)
DATA    ?= outputs/demo/videos/manifest.jsonl


help: ## list every target
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The install is redone only when pyproject.toml changes: the stamp file records the last one.
$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/python -c 'import vtt._compat as c; print(c.install_startup_guard())'
	@touch $@

setup: $(VENV)/.installed ## create .venv and install vtt with its test extras (quick when nothing changed)

demo: setup ## train both tiny models here on synthetic videos and print their losses
	$(VTT) demo $(ARGS)

local: setup ## run jobs/$(TRAINER).yaml here with the deepspeed launcher: make local TRAINER=llava GPUS=1
	$(VTT) run --config $(CONFIG) --gpus $(GPUS) $(ARGS)

check: setup ## check the DeepSpeed file of jobs/$(TRAINER).yaml for GPUS x NODES: make check TRAINER=llava GPUS=4 [DS=...]
	$(VTT) check --config $(CONFIG) --gpus $(GPUS) --nodes $(NODES) $(if $(DS),--deepspeed $(DS)) $(ARGS)
# Cluster jobs. CLUSTER is a profile in jobs/clusters/; NODES defaults to the profile's when not given.
CLUSTER ?= local
NODES_ARG = $(if $(filter command line environment,$(origin NODES)),--nodes $(NODES))
# The bare-runtime job runs the python3 on the PATH sbatch passes on: the venv's.
render submit: export PATH := $(abspath $(VENV))/bin:$(PATH)

render: setup ## write a job script under jobs/rendered/, print its path: make render CLUSTER=ci TRAINER=llava GPUS=4 [NODES=2]
	@$(VTT) render --cluster $(CLUSTER) --config $(CONFIG) --gpus $(GPUS) $(NODES_ARG) -o jobs/rendered/ $(ARGS)

submit: setup ## render and sbatch it, print the job id and log: make submit CLUSTER=ci TRAINER=llava GPUS=4 [NODES=2]
	@$(VTT) submit --cluster $(CLUSTER) --config $(CONFIG) --gpus $(GPUS) $(NODES_ARG) $(ARGS)

# Sweeps: one job array over GRID's product (space-separated name=v1,v2 items), at most PARALLEL tasks at once.
GRID     ?=
PARALLEL ?=
.PHONY: sweep chain
sweep: export PATH := $(abspath $(VENV))/bin:$(PATH)
sweep: setup ## one job array over GRID, a folder per task: make sweep CLUSTER=ci TRAINER=tiny-seq2seq GPUS=1 GRID="learning_rate=1e-3,3e-3 seed=1,2" [PARALLEL=2]
	@$(VTT) sweep --cluster $(CLUSTER) --config $(CONFIG) --gpus $(GPUS) $(NODES_ARG) $(foreach item,$(GRID),--grid $(item)) $(if $(PARALLEL),--max-parallel $(PARALLEL)) $(ARGS)

# Chains: train, then eval on DATA, then the report, each job starting when the one before completed.
chain: export PATH := $(abspath $(VENV))/bin:$(PATH)
chain: setup ## train -> eval -> report as dependent jobs, prints their ids: make chain CLUSTER=ci TRAINER=tiny-seq2seq GPUS=1 DATA=held-out.jsonl
	@$(VTT) chain --cluster $(CLUSTER) --config $(CONFIG) --gpus $(GPUS) $(NODES_ARG) --eval-data $(DATA) $(ARGS)
push: setup ## upload a run's final model (or a prepared dataset) to the Hub again: make push RUN=outputs/runs/llava
	$(VTT) push $(RUN) $(ARGS)
merge: setup ## merge RUN's adapter (use_peft) into its base, a full model in RUN/merged: make merge RUN=... [ARGS="--out DIR"]
	$(VTT) merge $(RUN) $(ARGS)
predict: setup ## answer DATA's questions with the model in RUN, into RUN/predictions.jsonl: make predict RUN=...
	$(VTT) predict --model $(RUN) --manifest $(DATA) --out $(RUN)/predictions.jsonl $(ARGS)

eval: setup ## score RUN's answers on DATA (BLEU, chrF, exact match): make eval RUN=... DATA=held-out.jsonl
	$(VTT) eval --model $(RUN) --data $(DATA) $(ARGS)

report: setup ## write RUN/report.html: loss and learning-rate curves, configs, sample predictions
	$(VTT) report $(RUN) $(ARGS)
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

system: ## install the system packages the tests use (as root; otherwise prints the command)
	@tools/system-packages.sh

# DeepSpeed compiles its CPU ops (g++, ninja) on first use; a kept folder spares the suite's launches the rebuild.
test test-fast: export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/vtt/torch_extensions

# Two pytest processes (pytest-xdist), a test file to each at a time: most of the suite waits on launches
# that keep one core busy (22 min against 34 in one process here). TEST_PROCESSES=0 runs it in this one.
TEST_PROCESSES ?= 2
test: system setup lint ## install what is missing (venv, and as root the system packages), run the whole suite
	$(VENV)/bin/pytest -n $(TEST_PROCESSES) --dist loadfile $(ARGS)

test-fast: system setup ## the suite without the launches marked slow (a few minutes): for iteration
	$(VENV)/bin/pytest -m "not slow" $(ARGS)

# DOCKER=podman goes through tools/podman (runc where crun fails, limits a root podman may set). The
# Dockerfile's other knobs: IMAGE_TORCH=cpu, IMAGE_PYTHON, IMAGE_OPS (DeepSpeed ops prebuilt; IMAGE_OPS= none), WHEELHOUSE
# (a host folder of wheels, tools/wheelhouse.sh; podman only: mounted with build -v, pip uses no index).
DOCKER_CLI    = $(if $(filter podman,$(notdir $(DOCKER))),tools/podman,$(DOCKER))
IMAGE_TORCH  ?=
IMAGE_PYTHON ?=
WHEELHOUSE   ?=
image: ## docker build the CUDA image vtt:<version> [DOCKER=podman] [CUDA_IMAGE=...@sha256:...] [ARCHS="8.0;9.0"]
	$(DOCKER_CLI) build -t $(IMAGE) $(if $(CUDA_IMAGE),--build-arg CUDA_IMAGE=$(CUDA_IMAGE)) $(if $(ARCHS),--build-arg TORCH_CUDA_ARCH_LIST="$(ARCHS)") \
	    $(if $(IMAGE_TORCH),--build-arg TORCH=$(IMAGE_TORCH)) $(if $(IMAGE_PYTHON),--build-arg PYTHON_VERSION=$(IMAGE_PYTHON)) \
	    $(if $(filter undefined,$(origin IMAGE_OPS)),,--build-arg DS_PREBUILD_OPS="$(IMAGE_OPS)") $(if $(WHEELHOUSE),-v $(abspath $(WHEELHOUSE)):/wheels:ro --build-arg WHEELHOUSE=/wheels) .

# The same Dockerfile on a local Debian 12 base (debootstrap + podman import, made once: tools/base-image.sh)
# with the CPU build of the pinned torch and no DeepSpeed op prebuilt (the demo needs none; compiling cpu_adam
# would double the build), its pip fed from a wheel folder the host's pip fills; then both
# trainers train in it and the shipped configs are checked in it, as its non-root user (tools/image-smoke.sh).
SMOKE_IMAGE  ?= vtt:$(VERSION)-cpu
SMOKE_BASE   ?= localhost/vtt-base:bookworm
SMOKE_WHEELS ?= $(HOME)/.cache/vtt/wheelhouse
.PHONY: image-smoke
image-smoke: setup ## build the image on a local Debian base with CPU torch (podman), train both tiny models and check the shipped configs in it
	@tools/base-image.sh $(SMOKE_BASE) >/dev/null
	@TORCH=cpu IMAGE_PYTHON=3.11 tools/wheelhouse.sh $(SMOKE_WHEELS) $(VENV)/bin/python
	@$(MAKE) --no-print-directory image DOCKER=podman IMAGE=$(SMOKE_IMAGE) CUDA_IMAGE=$(SMOKE_BASE) IMAGE_TORCH=cpu IMAGE_PYTHON=3.11 IMAGE_OPS= WHEELHOUSE=$(SMOKE_WHEELS)
	@tools/image-smoke.sh $(SMOKE_IMAGE)

sif: ## build vtt.sif from the image `make image` built (apptainer.def; runs its %test)
	$(APPTAINER) build vtt.sif apptainer.def

push-image: ## tag and push the image: make push-image REGISTRY=ghcr.io/you
	@test -n "$(REGISTRY)" || { echo "make push-image: set REGISTRY, e.g. make push-image REGISTRY=ghcr.io/you" >&2; exit 2; }
	$(DOCKER) tag $(IMAGE) $(REGISTRY)/$(IMAGE)
	$(DOCKER) push $(REGISTRY)/$(IMAGE)

stage: setup ## on a login node: fetch what a run config names into the HF cache: make stage CONFIG=jobs/llava.yaml [CACHE=/shared/hf]
	$(VTT) stage --config $(CONFIG) $(if $(CACHE),--cache $(CACHE)) $(ARGS)

# CLUSTER=local (the default): torchrun here on GPUS processes. With CLUSTER: a job of NODES nodes through `vtt submit`
# (the jobs branch's command; its profile's env sets VTT_EXPECT_INFINIBAND=1 where the nodes have InfiniBand).
nccl-check: setup ## all-reduce bus bandwidth, fails on a TCP fallback: make nccl-check [GPUS=2] | CLUSTER=x NODES=2
ifeq ($(CLUSTER),local)
	$(VENV)/bin/torchrun --standalone --nproc_per_node $(GPUS) -m vtt.cluster.fabric $(ARGS)
else
	$(VTT) submit --cluster $(CLUSTER) --config $(CONFIG) --nodes $(NODES) --gpus $(GPUS) --module vtt.cluster.fabric $(ARGS)
endif

clean: ## remove outputs/ and rendered jobs (keeps .venv)
	rm -rf outputs jobs/rendered
