#!/usr/bin/env bash
# The device call behind bench/RESULTS.md's "2026-12-02: the 7B with LoRA and QLoRA on one H200", from the
# repository root, with .whl/ (the wheels the image lacks) and .gpu/vtt-head/src (`git archive HEAD src`:
# vtt as committed, not the working tree other engineers are editing) carried:
#   OUT=$OUT bash bench/results/2026-12-02-h200-llava-7b-lora.sh
# A dry run on a CPU machine (tiny architecture, fp32, no Liger, one worker; the QLoRA runs are refused there):
#   CPU=1 ARCH=llava-tiny STEPS=3 OUT=/tmp/dry bash bench/results/2026-12-02-h200-llava-7b-lora.sh
set -uo pipefail
OUT=${OUT:?set OUT}
ARCH=${ARCH:-llava-7b}
STEPS=${STEPS:-15}
WORK=${WORK:-/tmp/vtt-bench}
mkdir -p "$OUT/logs"
extra=""
if [ -n "${CPU:-}" ]; then
  py=.venv/bin/python
  extra=" --bf16 false --use_liger_kernel false --dataloader_num_workers 1 --dataloader_persistent_workers false"
  export PYTHONPATH=$PWD/.gpu/vtt-head/src
else
  py=python3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.gpu/vtt-head/src
  export TORCH_CUDA_ARCH_LIST=9.0   # the image's 9.0a breaks DeepSpeed 0.19.8's op builder (NOTES.md)
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv
  # every process's GPU memory, each second: what the trainer held beyond PyTorch's allocator (context, libraries)
  nvidia-smi --query-compute-apps=timestamp,pid,used_memory --format=csv,noheader -l 1 > "$OUT/gpu-apps.csv" 2>&1 &
  smi=$!
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
$py - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as m, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("transformers", "trl", "peft", "deepspeed", "accelerate", "bitsandbytes", "liger-kernel", "datasets", "av"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
EOF
res="$OUT/results.jsonl"
bench() {
  $py bench/train_throughput.py --arch "$ARCH" --steps "$STEPS" --work "$WORK" --out "$res" "$@" 2>&1 | tee -a "$OUT/bench.log"
  cp "$WORK/$ARCH"/*.log "$OUT/logs/" 2>/dev/null
}
failed() { grep "\"name\": \"$1\"" "$res" | grep -q '"error"'; }
SECONDS=0
# 1. LoRA as shipped (micro batch 8, checkpointing), no cap
bench --config jobs/llava-7b-lora.yaml --variant "lora=$extra"
echo "== lora done at ${SECONDS}s"
# 2. QLoRA as shipped under the 24 GiB cap, vtt as committed
bench --config jobs/llava-7b-qlora.yaml --memory-cap-gb 24 --variant "qlora=$extra"
echo "== qlora done at ${SECONDS}s"
# 3. if vtt's QLoRA load failed: the same with the bench's stand-in for the fix
if failed qlora; then
  bench --config jobs/llava-7b-qlora.yaml --memory-cap-gb 24 --patch-qlora-load --variant "qlora-patched=$extra"
  echo "== qlora-patched done at ${SECONDS}s"
  # 3b. if that failed under DeepSpeed too: the same without DeepSpeed (plain Trainer, torch AdamW)
  if failed qlora-patched; then
    bench --config jobs/llava-7b-qlora.yaml --memory-cap-gb 24 --patch-qlora-load \
      --variant "qlora-patched-nods=--deepspeed ''$extra"
    echo "== qlora-patched-nods done at ${SECONDS}s"
  fi
fi
# 4. LoRA without checkpointing at micro batch 2 (the recompute is 1/3 of LoRA's work), no cap; ~100 s
if [ "$SECONDS" -lt 430 ] || [ -n "${CPU:-}" ]; then
  bench --config jobs/llava-7b-lora.yaml --variant "lora-nockpt=--per_device_train_batch_size 2 --activation_checkpointing false$extra"
fi
echo "== all done at ${SECONDS}s"
[ -n "${smi:-}" ] && kill "$smi"
exit 0
