#!/usr/bin/env bash
# A local Debian base image for `make image-smoke`, made once and then found by its tag:
#   tools/base-image.sh [TAG]        # default localhost/vtt-base:bookworm; prints the tag
# `debootstrap --variant=minbase bookworm` (about a minute, ~200 MB) and `podman import`: no registry is
# pulled from, so it works where Docker Hub cannot be reached. A tag already in podman's storage is kept
# (delete it with `podman rmi TAG` to make it again). Needs root (debootstrap), debootstrap and podman
# (tools/system-packages.sh installs both). Where Docker Hub is reachable, `make image-smoke
# SMOKE_BASE=docker.io/library/debian:bookworm` skips this script.
set -euo pipefail

tag=${1:-localhost/vtt-base:bookworm}
podman=${PODMAN:-podman}
if $podman image exists "$tag"; then
    echo "$tag"
    exit 0
fi
if [[ $tag != localhost/* ]]; then
    $podman pull --quiet "$tag" >/dev/null  # a registry's image (docker.io/library/debian:bookworm)
    echo "$tag"
    exit 0
fi
if ((EUID != 0)); then
    echo "tools/base-image.sh: debootstrap needs root; or pass a base you can pull: SMOKE_BASE=docker.io/library/debian:bookworm" >&2
    exit 1
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/vtt-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "tools/base-image.sh: debootstrap --variant=minbase bookworm into $rootfs ($mirror)" >&2
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# apt's downloaded .debs are not part of an image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | $podman import --quiet --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "$tag"
