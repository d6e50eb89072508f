#!/usr/bin/env bash
# Run the built image as its users do: `vtt demo` (both tiny trainers through the deepspeed launcher,
# their first and last losses printed) and `vtt check` on the shipped run configs (the commands of
# apptainer.def's %test), each in a fresh container as the image's non-root user.
#   tools/image-smoke.sh IMAGE      # `make image-smoke` runs it after building IMAGE
set -euo pipefail

image=${1:?usage: tools/image-smoke.sh IMAGE}
podman=${PODMAN:-$(dirname "$0")/podman}
# --shm-size: the trainers' processes share tensors through /dev/shm (podman's default is 64 MB).
run=("$podman" run --rm --shm-size 1g)
user=$("$podman" image inspect --format '{{.Config.User}}' "$image")
if [[ -z $user || $user == root || $user == 0 ]]; then
    echo "tools/image-smoke.sh: $image runs as '${user:-root}', not as a non-root user" >&2
    exit 1
fi
echo "== $image (user $user): vtt demo"
"${run[@]}" "$image" demo
echo "== $image: vtt check on the shipped configs"
# One container for both: vtt's imports are paid once.
"${run[@]}" -w /opt/vtt --entrypoint bash "$image" -c "set -e
vtt check --config jobs/llava.yaml --deepspeed deepspeed/zero3.json --gpus 4
vtt check --config jobs/seq2seq.yaml --deepspeed deepspeed/zero2.json --gpus 4"
echo "== $image: both trainers trained, the shipped configs check"
