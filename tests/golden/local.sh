#!/bin/bash
# vtt-llava: the llava trainer, 1 node(s) x 1 GPU(s), cluster profile jobs/clusters/local.yaml.
# Rendered by vtt 0.1.0 from jobs/llava.yaml and jobs/clusters/local.yaml: do not edit, change them and render again:
#   vtt render --cluster jobs/clusters/local.yaml --config jobs/llava.yaml --gpus 1 --nodes 1
# Run it here: bash THIS_FILE      (`make local` runs the same `vtt run` directly)

set -euo pipefail
echo "start: $(date -Is) on $(hostname)"
# The exit status is saved first: $(date) would reset $?.
# shellcheck disable=SC2317  # run by the trap
finish() { local status=$?; echo "end: $(date -Is) exit $status"; }
trap finish EXIT

export PYTHONUNBUFFERED=1
# Secrets (HF_TOKEN) are not in this file: the job reads them from the environment it was submitted
# from, or huggingface_hub reads the token file in HF_HOME.

python3 -m vtt.cli run --config jobs/llava.yaml --gpus 1
