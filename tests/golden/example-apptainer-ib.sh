#!/bin/bash
# vtt-llava: the llava trainer, 2 node(s) x 4 GPU(s), cluster profile jobs/clusters/example-apptainer-ib.yaml.
# Rendered by vtt 0.1.0 from jobs/llava.yaml and jobs/clusters/example-apptainer-ib.yaml: do not edit, change them and render again:
#   vtt render --cluster jobs/clusters/example-apptainer-ib.yaml --config jobs/llava.yaml --gpus 4 --nodes 2
# Submit from the folder it was rendered in (paths are relative to it); the log folder must exist first:
#   mkdir -p logs && sbatch THIS_FILE      (`vtt submit` / `make submit` do both)
# Follow it: squeue -j JOBID; tail -f logs/vtt-llava-JOBID.out
#SBATCH --job-name=vtt-llava
#SBATCH --output=logs/%x-%j.out
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:h100:4
#SBATCH --cpus-per-task=64
#SBATCH --partition=gpu
#SBATCH --account=proj123
#SBATCH --qos=normal
#SBATCH --time=1-00:00:00
#SBATCH --mem=480G
#SBATCH --constraint=ib
#SBATCH --exclusive
#SBATCH --mail-type=END,FAIL

set -euo pipefail
echo "start: $(date -Is) job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}) on ${SLURM_JOB_NODELIST}"
# The exit status is saved first: $(date) would reset $?.
finish() { local status=$?; echo "end: $(date -Is) exit $status"; }
trap finish EXIT

module load apptainer/1.3

export PYTHONUNBUFFERED=1
export HF_HOME=/projects/proj123/hf-cache
# Compute nodes have no internet: read models and datasets only from the staged cache (HF_HOME).
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TMPDIR=/scratch/"${USER}"/"vtt-${SLURM_JOB_ID:-$$}"
mkdir -p "$TMPDIR"
export NCCL_IB_HCA=mlx5
export NCCL_SOCKET_IFNAME=ib0
export NCCL_DEBUG=WARN
export OMP_NUM_THREADS=8
export TORCH_CUDA_ARCH_LIST=9.0
# Secrets (HF_TOKEN) are not in this file: the job reads them from the environment it was submitted
# from, or huggingface_hub reads the token file in HF_HOME.

# Node and GPU counts come from Slurm's allocation at run time, never typed twice.
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:?Slurm gave this job no GPUs}"
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
    --module vtt.trainers.llava --config jobs/llava.yaml)
# One launcher per node, no SSH: each runs the deepspeed launcher with its node rank from SLURM_NODEID.
# shellcheck disable=SC2016  # $0, $@ and SLURM_NODEID expand in each node's shell, not here
# TMPDIR is made on every node: scratch is often node-local.
NODE_LAUNCH='mkdir -p "$TMPDIR" && exec "$0" -m deepspeed.launcher.runner --no_ssh --node_rank="$SLURM_NODEID" "$@"'
srun --kill-on-bad-exit=1 --wait=60 --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \
    apptainer exec --nv --bind /projects/proj123/hf-cache:/projects/proj123/hf-cache --bind /scratch/"${USER}":/scratch/"${USER}" --bind /projects/proj123/data:/data:ro --bind /dev/infiniband /projects/proj123/images/vtt.sif \
    bash -c "$NODE_LAUNCH" python3 "${LAUNCH[@]}"
