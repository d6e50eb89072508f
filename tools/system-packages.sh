#!/usr/bin/env bash
# The system packages the test suite uses, installed when missing (as root) or named (otherwise).
#   tools/system-packages.sh          # `make test` and `make test-fast` run it first
# slurm-wlm + munge: the job tests start a real Slurm; shellcheck: rendered job scripts are linted;
# chromium + fonts: the report is opened in a headless browser; podman, runc, debootstrap (+ netavark, uidmap,
# fuse-overlayfs, slirp4netns: podman's network and storage helpers, which --no-install-recommends leaves out):
# tests/test_image.py builds and runs the image (make image-smoke).
set -euo pipefail
declare -A PACKAGE_OF=([slurmctld]=slurm-wlm [munged]=munge [shellcheck]=shellcheck [chromium]=chromium
    [podman]=podman [runc]=runc [debootstrap]=debootstrap [newuidmap]=uidmap [fuse-overlayfs]=fuse-overlayfs
    [slirp4netns]=slirp4netns)
missing=()
for command in "${!PACKAGE_OF[@]}"; do
    command -v "$command" >/dev/null || missing+=("${PACKAGE_OF[$command]}")
done
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
[[ -e /usr/lib/podman/netavark ]] || missing+=(netavark)
((${#missing[@]})) || exit 0
install="apt-get update -q && apt-get install -y -q --no-install-recommends ${missing[*]}"
if ((EUID != 0)); then
    echo "The test suite needs system packages this machine lacks: ${missing[*]}" >&2
    echo "Install them as root, then run make test again:  sudo sh -c '$install'" >&2
    exit 1
fi
echo "Installing the system packages the tests use: ${missing[*]}"
DEBIAN_FRONTEND=noninteractive sh -c "$install"
