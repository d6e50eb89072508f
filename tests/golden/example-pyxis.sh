#!/bin/bash
# vtt-llava: the llava trainer, 2 node(s) x 8 GPU(s), cluster profile jobs/clusters/example-pyxis.yaml.
# Rendered by vtt 0.1.0 from jobs/llava.yaml and jobs/clusters/example-pyxis.yaml: do not edit, change them and render again:
#   vtt render --cluster jobs/clusters/example-pyxis.yaml --config jobs/llava.yaml --gpus 8 --nodes 2
# Submit from the folder it was rendered in (paths are relative to it); the log folder must exist first:
#   mkdir -p logs && sbatch THIS_FILE      (`vtt submit` / `make submit` do both)
# Follow it: squeue -j JOBID; tail -f logs/vtt-llava-JOBID.out
#SBATCH --job-name=vtt-llava
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=h100:8
#SBATCH --cpus-per-task=96
#SBATCH --partition=batch
#SBATCH --account=vision
#SBATCH --time=04:00:00
#SBATCH --mem=0
#SBATCH --exclusive

set -euo pipefail
echo "start: $(date -Is) job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}) on ${SLURM_JOB_NODELIST}"
# The exit status is saved first: $(date) would reset $?.
# shellcheck disable=SC2317  # run by the trap
finish() { local status=$?; echo "end: $(date -Is) exit $status"; }
trap finish EXIT

export PYTHONUNBUFFERED=1
export HF_HOME=/lustre/vision/hf-cache
export NCCL_DEBUG=WARN
export OMP_NUM_THREADS=12
# Secrets (HF_TOKEN) are not in this file: the job reads them from the environment it was submitted
# from, or huggingface_hub reads the token file in HF_HOME.

# Node and GPU counts come from Slurm's allocation at run time, never typed twice.
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:?Slurm gave this job no GPUs}"
# srun asks for SLURM_GPUS_PER_NODE, which sbatch set when the job was submitted: a job that starts with
# another GPU count (its request changed while it was requeued) asks for the allocation's.
export SLURM_GPUS_PER_NODE="$GPUS_PER_NODE"
mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
MASTER_ADDR="${HOSTS[0]}"
# A port from the job id: two jobs sharing a node get different ports; 10000-29999 stays below Linux's
# ephemeral range, where the OS hands out ports of its own.
MASTER_PORT=$((10000 + SLURM_JOB_ID % 20000))
# The deepspeed launcher takes the layout from this hostfile (one line per node, slots = GPUs per node).
# With a hostfile it ignores CUDA_VISIBLE_DEVICES when counting (Slurm sets it on GPU nodes, even fake
# ones), so each node starts exactly GPUS_PER_NODE processes, and gives each process a device index
# 0..GPUS_PER_NODE-1 among the GPUs Slurm's cgroup leaves visible on the node.
HOSTFILE=logs/"${SLURM_JOB_NAME}-${SLURM_JOB_ID}.hostfile"
for host in "${HOSTS[@]}"; do echo "$host slots=$GPUS_PER_NODE"; done > "$HOSTFILE"
echo "nodes: ${HOSTS[*]}; $GPUS_PER_NODE GPU(s) each; master $MASTER_ADDR:$MASTER_PORT"

LAUNCH=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
    --module vtt.train.llava --config jobs/llava.yaml)
# One launcher per node, no SSH: each runs the deepspeed launcher with its node rank from SLURM_NODEID.
# shellcheck disable=SC2016  # $0, $@ and SLURM_NODEID expand in each node's shell, not here
# trap "" USR1: the launchers ignore the warning signal (it would kill them); ignored stays ignored across
# exec, and the trainers install their own handler.
NODE_LAUNCH='trap "" USR1; exec "$0" -m deepspeed.launcher.runner --no_ssh --node_rank="$SLURM_NODEID" "$@"'

# Preemption: Slurm sends USR1 to this script 120 s before the time limit (--signal). The trap
# passes it to srun, which signals every process of the step: the trainers save a checkpoint at the end of
# the current optimizer step and exit 75. Then the job requeues itself and resumes from it.
WARNED=0
SRUN_PID=""
# shellcheck disable=SC2317  # run by the trap
warn() {
    WARNED=1
    echo "vtt: $(date -Is) USR1: the trainers save a checkpoint and stop"
    if [[ -n $SRUN_PID ]]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap warn USR1
srun --kill-on-bad-exit=1 --wait=60 --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \
    --container-image=/lustre/vision/images/vtt+latest.sqsh --container-mounts="$PWD:$PWD",/lustre/vision/hf-cache:/lustre/vision/hf-cache,/lustre/vision/data:/data --container-workdir="$PWD" \
    bash -c "$NODE_LAUNCH" python3 "${LAUNCH[@]}" &
SRUN_PID=$!
# wait returns early (status > 128) when the trap runs: wait again while srun is there, then take its
# status (bash keeps the status of an ended background process for a later wait).
while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID" || true; done
STATUS=0
wait "$SRUN_PID" || STATUS=$?
RESTARTS="${SLURM_RESTART_COUNT:-0}"
case "$STATUS" in
    0) ;;
    2|3|4|28)
        echo "vtt: exit $STATUS: not requeued (it would fail the same way: see the error above)" ;;
    *)
        if [[ $STATUS -eq 75 || $WARNED -eq 1 ]]; then
            if ((RESTARTS < 3)); then
                echo "vtt: $(date -Is) requeued (restart $((RESTARTS + 1)) of at most 3): the next start resumes from the newest checkpoint"
                scontrol requeue "$SLURM_JOB_ID"
            else
                echo "vtt: stopped after 3 requeue(s) (max_requeues of jobs/clusters/example-pyxis.yaml): submit again to resume"
            fi
        fi ;;
esac
exit "$STATUS"
