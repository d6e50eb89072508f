# vtt: one CUDA image with both trainers. First draft; the containers issue completes it
# (prebuilt DeepSpeed ops, non-root user, pinned digest).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 VTT_HOME=/opt/vtt \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} HF_HOME=/cache/huggingface
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ninja-build \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/vtt
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir -e .
COPY jobs ./jobs
COPY deepspeed ./deepspeed
ENTRYPOINT ["vtt"]
