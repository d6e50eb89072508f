#!/usr/bin/env bash
# A folder of every file the image's pip installs (wheels, DeepSpeed's sdist), downloaded on the host:
#   TORCH=cpu tools/wheelhouse.sh DIR [PYTHON]     # PYTHON: default .venv/bin/python
# `make image-smoke` mounts DIR into the build (podman build -v DIR:/wheels:ro) and the Dockerfile's
# install.sh installs from it with --no-index: the build's pip never reaches an index, so it needs neither
# the network nor this machine's CA bundle, and takes the files the host's pip already has (its cache, its
# configured indexes and find-links). The pins are install.sh's own (`install.sh constraints`): the same
# lock as the image. Files already in DIR are kept, so a second run only checks. The wheels are for
# PYTHON's version, which must be the image's (Debian 12's 3.11 for the smoke image).
set -euo pipefail

dir=${1:?usage: TORCH=cpu|cuda tools/wheelhouse.sh DIR [PYTHON]}
python=${2:-.venv/bin/python}
root=$(cd "$(dirname "$0")/.." && pwd)
want=${IMAGE_PYTHON:-}
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ -n $want && $want != "$have" ]]; then
    echo "tools/wheelhouse.sh: $python is Python $have, the image's is $want: give a Python $want" >&2
    exit 2
fi
mkdir -p "$dir"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$root/docker/install.sh" constraints "$root/pyproject.toml" >"$constraints"
download=("$python" -m pip download --quiet --dest "$dir" -c "$constraints")
# pip's own complaints about index folders it is configured with but that lack a package are noise here.
quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }

if [[ ${TORCH:-cuda} == cpu ]]; then
    # The CPU build of the pinned torch: from the sources pip is configured with when one has it (a local
    # wheel folder), else from PyTorch's CPU index.
    version=$(sed -n 's/^torch==//p' "$constraints")
    torch="torch==${version%%+*}+cpu"
    if ! "${download[@]}" "$torch" 2> >(quiet); then
        "${download[@]}" --extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" "$torch" 2> >(quiet)
    fi
fi
"${download[@]}" -r "$constraints" 2> >(quiet)
echo "$dir: $(find "$dir" -maxdepth 1 -type f | wc -l) files, $(du -sh "$dir" | cut -f1)"
