#!/usr/bin/env bash
# Install vtt's Python stack from its one lock, pyproject.toml's pins, into the Python on PATH (a venv).
# The Dockerfile runs these steps; tests/test_containers.py runs the same script in a fresh venv.
#
#   docker/install.sh deps pyproject.toml   # torch, DeepSpeed with its ops prebuilt, every other pin
#   docker/install.sh vtt  .                # vtt itself, its dependencies already in place
#
# Environment: DS_PREBUILD_OPS ("FUSED_ADAM CPU_ADAM": DeepSpeed ops compiled now, so no job compiles at
# start; empty: none) and TORCH_CUDA_ARCH_LIST (the GPU architectures they are compiled for).
set -euo pipefail

step=${1:?usage: install.sh deps PYPROJECT | install.sh vtt SRC}
target=${2:?usage: install.sh deps PYPROJECT | install.sh vtt SRC}
constraints=${VTT_CONSTRAINTS:-/tmp/vtt-constraints.txt}

if [[ $step == deps ]]; then
    # The pins become a constraints file: every install below obeys them, so the image cannot
    # drift from pyproject.toml. tomllib is in the standard library from Python 3.11.
    python - "$target" >"$constraints" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
# The image is the GPU runtime: the `gpu` extra (Liger's Triton kernels) belongs in it.
pins = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["gpu"]
pins += project["build-system"]["requires"]
loose = [pin for pin in pins if "==" not in pin]
if loose:
    sys.exit(f"{sys.argv[1]}: every dependency must be pinned with ==, these are not: {loose}")
print("\n".join(pins))
PY
    # DeepSpeed is an sdist whose setup.py imports torch and compiles the ops: torch and the build
    # tools come first, and DeepSpeed builds against them (no build isolation).
    build_tools=$(sed -n 's/==.*//p' "$constraints" | grep -x -E 'setuptools|wheel' | tr '\n' ' ')
    # shellcheck disable=SC2086  # one word per package
    python -m pip install --no-cache-dir -c "$constraints" torch $build_tools
    # DeepSpeed 0.19.8 cannot parse arch suffixes ("9.0a": invalid literal for int()); sm_90 code runs on sm_90a.
    if [[ -n ${TORCH_CUDA_ARCH_LIST:-} ]]; then
        TORCH_CUDA_ARCH_LIST=$(sed -E 's/([0-9]+\.[0-9]+)[a-z]+/\1/g' <<<"$TORCH_CUDA_ARCH_LIST")
        export TORCH_CUDA_ARCH_LIST
    fi
    for op in ${DS_PREBUILD_OPS:-}; do export "DS_BUILD_${op}=1"; done
    python -m pip install --no-cache-dir --no-build-isolation -c "$constraints" deepspeed
    # Fail the build, not the first job, when an op asked for was not compiled.
    python - ${DS_PREBUILD_OPS:-} <<'PY'
import sys

from deepspeed.git_version_info import installed_ops

missing = [op for op in sys.argv[1:] if not installed_ops.get(op.lower())]
if missing:
    sys.exit(f"DeepSpeed ops not prebuilt: {missing}; installed: {installed_ops}")
print("DeepSpeed prebuilt ops:", sorted(op for op, built in installed_ops.items() if built) or "none")
PY
    python -m pip install --no-cache-dir -c "$constraints" -r "$constraints"
elif [[ $step == vtt ]]; then
    # Dependencies are in place; --no-deps keeps pip from resolving (and upgrading) anything.
    python -m pip install --no-cache-dir --no-deps --no-build-isolation "$target"
    python -m pip check
else
    echo "install.sh: unknown step '$step': use deps or vtt" >&2
    exit 2
fi
