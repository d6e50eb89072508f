# vtt: one CUDA image with both trainers and everything a rendered job needs.
#   make image                                    # docker build -t vtt:<version> .
#   docker run --gpus all --rm vtt:0.1.0 demo     # the entrypoint is `vtt`
#   make image-smoke                              # this same file on a local Debian base with CPU torch
#                                                 # (podman), then both trainers train in it (docs/containers.md)
# Versions: the base image below (tag, digest noted); Python from that Ubuntu release; every Python
# package from pyproject.toml's pins (the one lock), installed by docker/install.sh, the same script
# tests/test_containers.py runs in a fresh venv.

# nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04 was
#   sha256:c2621d98e7de80c2aec5eb8403b19c67454c8f5b0c929e8588fd3563c9b6558d
# To build from exactly that: make image CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04@sha256:c2621d98...
# CUDA 13 matches the CUDA major of PyPI's torch 2.13 wheels, which DeepSpeed's op build requires;
# the devel flavour brings nvcc for the prebuilt ops (and any op a user's config adds later).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}
# Declared again to be seen after FROM (the label below records it).
ARG CUDA_IMAGE

# The Python of the base image's release (Ubuntu 24.04: 3.12; `make image-smoke`'s Debian 12: 3.11).
ARG PYTHON_VERSION=3.12
# cuda: PyPI's torch (its CUDA 13 build) and the `gpu` extra. cpu: the CPU build of the same pinned
# torch, without the `gpu` extra (no Triton): `make image-smoke` passes it with a Debian base.
ARG TORCH=cuda
# Empty: pip reads the index. A folder: pip installs from its files only, no index (`make image-smoke`
# fills one on the host with tools/wheelhouse.sh and mounts it for the build: podman build -v).
ARG WHEELHOUSE=""
# GPU architectures the DeepSpeed ops are compiled for: 8.0 = A100, 9.0 = H100/H200. Give plain
# major.minor: DeepSpeed 0.19.8 cannot parse "9.0a" (install.sh strips such suffixes anyway).
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
# DeepSpeed ops compiled into the image, so no job compiles at start: fused_adam (a DeepSpeed "AdamW"
# optimizer block on GPU) and cpu_adam (ZeRO optimizer offload).
ARG DS_PREBUILD_OPS="FUSED_ADAM CPU_ADAM"
ARG VTT_UID=1001

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    VTT_HOME=/opt/vtt \
    HF_HOME=/cache/huggingface \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's packages are not pinned one by one: the base image's digest fixes the release, and
# noble's archive keeps only the latest point release of each, so an exact pin would break the build.
# libibverbs1/ibverbs-providers/librdmacm1: without them NCCL cannot use a bound /dev/infiniband
# and falls back to TCP sockets (vtt.cluster.fabric checks for that).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" "python${PYTHON_VERSION}-dev" \
        g++ ninja-build git ca-certificates libibverbs1 ibverbs-providers librdmacm1 \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv /opt/venv

WORKDIR /opt/vtt
# Dependencies first, vtt's source after: editing src/ does not reinstall torch and rebuild DeepSpeed.
COPY pyproject.toml docker/install.sh ./
RUN DS_PREBUILD_OPS="${DS_PREBUILD_OPS}" TORCH="${TORCH}" WHEELHOUSE="${WHEELHOUSE}" ./install.sh deps pyproject.toml
COPY README.md ./
COPY src ./src
RUN ./install.sh vtt . && pip freeze > /opt/vtt/image-freeze.txt
# Job templates, run configs and cluster profiles (jobs/), ZeRO configs (deepspeed/): found through VTT_HOME.
COPY jobs ./jobs
COPY deepspeed ./deepspeed

# A non-root user; the HF cache and the work folder are writable by any uid, since clusters run the
# image as the submitting user (Apptainer always does, `docker run --user` often).
RUN useradd --create-home --uid "${VTT_UID}" vtt \
    && mkdir -p /cache/huggingface /workspace \
    && chmod 1777 /cache/huggingface /workspace
USER ${VTT_UID}
WORKDIR /workspace

LABEL org.opencontainers.image.title="vtt" \
      org.opencontainers.image.description="Fine-tune video-language models (LLaVA, NLLB) under DeepSpeed" \
      org.opencontainers.image.base.name="${CUDA_IMAGE}" \
      vtt.torch="${TORCH}"
ENTRYPOINT ["vtt"]
CMD ["--help"]
