#!/usr/bin/env bash
# One device call of the Qwen2.5-VL-7B video bench (bench/RESULTS.md), from the repository root, with .whl/ (the
# wheels the image lacks: tools/gpu-wheels.sh av==18.1.0 [liger-kernel==0.8.5]) and .gpu/vtt-head/src
# (`git archive HEAD src`: vtt as committed) carried:
#   OUT=$OUT RUNS="probe mb4" bash bench/qwen25vl_video.sh
# RUNS: probe (bench/gpu_probe.py: torch's varlen attention, Liger per family), mb4 (the peer's best padded setting,
# with the seed approach in the same call), mb8, nockpt2, prof4 (VTT_PROFILE_STEPS), packed (padding-free rows).
# The calls of 2026-12-02 ran this file as bench/results/2026-12-02-h200-qwen25vl-video.sh (at 5c32c44).
# A dry run on a CPU machine (the peer's tiny Qwen2.5-VL, fp32, no Liger, one worker, no seed):
#   CPU=1 ARCH=qwen2_5_vl-tiny STEPS=3 OUT=/tmp/dry bash bench/qwen25vl_video.sh
set -uo pipefail
OUT=${OUT:?set OUT}
ARCH=${ARCH:-qwen2_5_vl-7b}
STEPS=${STEPS:-20}
RUNS=${RUNS:-mb4}
WORK=${WORK:-/tmp/vtt-bench}
mkdir -p "$OUT"
# pure bf16 on one GPU: no DeepSpeed, the weights loaded in bf16, torch's fused AdamW keeps its states in bf16
strategy="--deepspeed ''"
[ -n "${LIGER:-}" ] && strategy+=" --use_liger_kernel ${LIGER}"   # the run config's choice unless asked
extra=""
seed=(--seed-script bench/seed_baseline.py --seed-args "--size 0.5b --batch 8 --workers 12 --gc --steps 18")
if [ -n "${CPU:-}" ]; then
  py=.venv/bin/python
  extra=" --bf16 false --dataloader_num_workers 1 --dataloader_persistent_workers false"
  seed=()
  export PYTHONPATH=$PWD/.gpu/vtt-head/src
else
  py=python3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.gpu/vtt-head/src
  export TORCH_CUDA_ARCH_LIST=9.0   # the image's 9.0a breaks DeepSpeed 0.19.8's op builder (NOTES.md)
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
  nproc; free -g | head -2
  nvidia-smi --query-compute-apps=timestamp,pid,used_memory --format=csv,noheader -l 1 > "$OUT/gpu-apps.csv" 2>&1 &
  smi=$!
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
$py - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as m, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("transformers", "trl", "deepspeed", "accelerate", "liger-kernel", "datasets", "torchvision",
             "tokenizers", "opencv-python-headless", "huggingface-hub", "peft"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
import vtt, os; print("vtt from", os.path.dirname(vtt.__file__))
PY
res="$OUT/results.jsonl"
bench() {
  $py bench/train_throughput.py --arch "$ARCH" --work "$WORK" --config jobs/qwen2_5_vl-7b.yaml --out "$res" "$@" 2>&1 \
    | grep --line-buffered -v -i -E "warn|it/s\]" | tee -a "$OUT/bench.log"   # line-buffered: the third call lost its log
  rm -f "$WORK/$ARCH"/run-*/*.safetensors   # each run's final save_model: 16 GB apiece on a 64 GB disk
}
SECONDS=0
for r in $RUNS; do
  case $r in
    # the peer's best padded setting: micro batch 4, one optimizer step per micro batch, checkpointing on
    probe) $py bench/gpu_probe.py --out "$OUT/probe.jsonl" 2>&1 | grep --line-buffered -v -i warn | tee -a "$OUT/bench.log" ;;
    mb4) bench --steps "$STEPS" "${seed[@]}" --variant "bf16-mb4=$strategy --per_device_train_batch_size 4$extra" ;;
    mb8) [ "$SECONDS" -lt 330 ] && bench --steps 12 --variant "bf16-mb8=$strategy --per_device_train_batch_size 8$extra" ;;
    nockpt2) [ "$SECONDS" -lt 330 ] && bench --steps 16 \
        --variant "bf16-mb2-nockpt=$strategy --per_device_train_batch_size 2 --activation_checkpointing false$extra" ;;
    packed) [ "$SECONDS" -lt 450 ] && bench --steps "$STEPS" \
        --variant "bf16-packed=$strategy --per_device_train_batch_size 4 --padding_free true$extra" ;;
    prof4) [ "$SECONDS" -lt 420 ] && VTT_PROFILE_STEPS=6-7 bench --steps 8 \
        --variant "bf16-mb4-profile=$strategy --per_device_train_batch_size 4$extra" ;;
  esac
  echo "== $r done at ${SECONDS}s" | tee -a "$OUT/bench.log"
done
# the trainers' logs, vtt-run.json, throughput.json and any profile, in one file (8 files come back at most)
tar -czf "$OUT/logs.tar.gz" -C "$WORK/$ARCH" --exclude ./model --exclude ./varied --exclude ./hooks --exclude '*.safetensors' . 2>/dev/null
[ -n "${smi:-}" ] && kill "$smi"
exit 0
