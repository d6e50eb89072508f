#!/usr/bin/env bash
# Install vtt's Python stack from its one lock, pyproject.toml's pins, into the Python on PATH (a venv).
# The Dockerfile runs these steps; tests/test_containers.py runs the same script in a fresh venv.
#
#   docker/install.sh deps pyproject.toml          # torch, DeepSpeed with its ops prebuilt, every other pin
#   docker/install.sh vtt  .                       # vtt itself, its dependencies already in place
#   docker/install.sh constraints pyproject.toml   # print the pins the deps step installs under
#
# Environment: DS_PREBUILD_OPS ("FUSED_ADAM CPU_ADAM": DeepSpeed ops compiled now, so no job compiles at
# start; empty: none), TORCH_CUDA_ARCH_LIST (the GPU architectures they are compiled for), TORCH (cuda,
# the default: PyPI's torch and the `gpu` extra; cpu: torch's CPU build of the same pin, from
# TORCH_INDEX_URL, and no `gpu` extra) and WHEELHOUSE (a folder: install from its files only, no index;
# tools/wheelhouse.sh fills one).
set -euo pipefail

step=${1:?usage: install.sh deps PYPROJECT | install.sh vtt SRC | install.sh constraints PYPROJECT}
target=${2:?usage: install.sh deps PYPROJECT | install.sh vtt SRC | install.sh constraints PYPROJECT}
constraints=${VTT_CONSTRAINTS:-/tmp/vtt-constraints.txt}
torch_build=${TORCH:-cuda}
if [[ $torch_build != cuda && $torch_build != cpu ]]; then
    echo "install.sh: TORCH=$torch_build: use cuda or cpu" >&2
    exit 2
fi
# Where packages come from: the index (PyPI, or what pip is configured with), or only a wheel folder.
source=()
[[ -z ${WHEELHOUSE:-} ]] || source=(--no-index --find-links "$WHEELHOUSE")

pins() {
    # The pins as a constraints file: every install below obeys them, so the image cannot drift from
    # pyproject.toml. tomllib is in the standard library from Python 3.11.
    python - "$1" "$torch_build" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
pins = list(project["project"]["dependencies"])
# A GPU image is the GPU runtime: the `gpu` extra (Liger's Triton kernels, bitsandbytes) belongs in it.
# The CPU build of torch has no Triton, so a CPU image leaves the extra out.
if sys.argv[2] == "cuda":
    pins += project["project"]["optional-dependencies"]["gpu"]
pins += project["build-system"]["requires"]
loose = [pin for pin in pins if "==" not in pin]
if loose:
    sys.exit(f"{sys.argv[1]}: every dependency must be pinned with ==, these are not: {loose}")
print("\n".join(pins))
PY
}

if [[ $step == constraints ]]; then
    pins "$target"
elif [[ $step == deps ]]; then
    pins "$target" >"$constraints"
    # torch: PyPI's wheel is the CUDA build; the CPU build of the same version is torch==X+cpu, from
    # PyTorch's CPU index (or the wheel folder).
    torch=(torch)
    if [[ $torch_build == cpu ]]; then
        version=$(sed -n 's/^torch==//p' "$constraints")
        torch=("torch==${version%%+*}+cpu")
        if [[ -z ${WHEELHOUSE:-} ]]; then
            torch+=(--index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
                --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}")
        fi
    fi
    # DeepSpeed is an sdist whose setup.py imports torch and compiles the ops: torch and the build
    # tools come first, and DeepSpeed builds against them (no build isolation).
    build_tools=$(sed -n 's/==.*//p' "$constraints" | grep -x -E 'setuptools|wheel' | tr '\n' ' ')
    # shellcheck disable=SC2086  # one word per package
    python -m pip install --no-cache-dir "${source[@]}" -c "$constraints" "${torch[@]}" $build_tools
    # A CPU image with PyPI's CUDA torch (4 GB of CUDA libraries) would only show in its size.
    if [[ $torch_build == cpu ]]; then
        python - <<'PY'
import sys
from importlib.metadata import version

if not version("torch").endswith("+cpu"):
    sys.exit(f"TORCH=cpu but torch {version('torch')} is not the CPU build")
print(f"torch {version('torch')}")
PY
    fi
    # DeepSpeed 0.19.8 cannot parse arch suffixes ("9.0a": invalid literal for int()); sm_90 code runs on sm_90a.
    if [[ -n ${TORCH_CUDA_ARCH_LIST:-} ]]; then
        TORCH_CUDA_ARCH_LIST=$(sed -E 's/([0-9]+\.[0-9]+)[a-z]+/\1/g' <<<"$TORCH_CUDA_ARCH_LIST")
        export TORCH_CUDA_ARCH_LIST
    fi
    for op in ${DS_PREBUILD_OPS:-}; do export "DS_BUILD_${op}=1"; done
    python -m pip install --no-cache-dir "${source[@]}" --no-build-isolation -c "$constraints" deepspeed
    # Fail the build, not the first job, when an op asked for was not compiled.
    # shellcheck disable=SC2086  # one word per op
    python - ${DS_PREBUILD_OPS:-} <<'PY'
import sys

from deepspeed.git_version_info import installed_ops

missing = [op for op in sys.argv[1:] if not installed_ops.get(op.lower())]
if missing:
    sys.exit(f"DeepSpeed ops not prebuilt: {missing}; installed: {installed_ops}")
print("DeepSpeed prebuilt ops:", sorted(op for op, built in installed_ops.items() if built) or "none")
PY
    python -m pip install --no-cache-dir "${source[@]}" -c "$constraints" -r "$constraints"
elif [[ $step == vtt ]]; then
    # Dependencies are in place; --no-deps keeps pip from resolving (and upgrading) anything.
    python -m pip install --no-cache-dir --no-index --no-deps --no-build-isolation "$target"
    python -m pip check
    python -c 'import vtt._compat as c; print(c.install_startup_guard())'  # a CPU torch beside PyPI's CUDA torchvision: vtt/_compat.py says why
else
    echo "install.sh: unknown step '$step': use deps, vtt or constraints" >&2
    exit 2
fi
