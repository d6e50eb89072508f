"""What a GPU image can do for vtt's fast paths, measured before a bench relies on them (one JSON line each).

- varlen: torch's own variable-length flash attention (`torch.nn.attention.varlen.varlen_attn`), the
  padding-free path's kernel: present, its signature, equal to SDPA per sequence (bf16, GQA), and its time
  against SDPA over the same sequences one by one.
- liger: `use_liger_kernel` applied to each family's tiny model (vtt tiny) the way the Trainer applies it,
  then one forward and backward on text: which families Liger's kernels work for with the pinned transformers.

    python bench/gpu_probe.py --out probe.jsonl
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F


def emit(out: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")


def timed(fn, repeat: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def probe_varlen(out: Path) -> None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as error:
        emit(out, {"probe": "varlen", "available": False, "error": str(error)})
        return
    record = {"probe": "varlen", "available": True, "signature": str(inspect.signature(varlen_attn))}
    lengths = [4800, 720, 5760, 2400]  # a step's packed rows of Qwen2.5-VL-7B on the bench's clips
    heads, kv_heads, dim = 28, 4, 128
    total = sum(lengths)
    q = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(total, kv_heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(total, kv_heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    gqa = {"enable_gqa": True} if "enable_gqa" in params else {}

    def packed():
        repeat = 1 if gqa else heads // kv_heads
        kk, vv = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
        return varlen_attn(q, kk, vv, cu, cu, max(lengths), max(lengths), **causal, **gqa)

    def one_by_one():
        outs = []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            qq, kk, vv = (t[a:b].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)[0].transpose(0, 1))
        return torch.cat(outs)

    try:
        got, want = packed(), one_by_one()
        record["max_abs_diff"] = float((got.float() - want.float()).abs().max())
        record["forward_s"] = {"varlen": timed(packed), "sdpa_per_sequence": timed(one_by_one)}
        record["forward_backward_s"] = {
            "varlen": timed(lambda: packed().sum().backward()),
            "sdpa_per_sequence": timed(lambda: one_by_one().sum().backward()),
        }
    except Exception as error:  # a probe reports what failed
        record["error"] = "".join(traceback.format_exception_only(error)).strip()
    emit(out, record)


def probe_liger(out: Path, families: list[str]) -> None:
    from transformers import AutoModelForImageTextToText
    from transformers.integrations.liger import apply_liger_kernel

    from vtt.models.tiny_video import build_tiny_vlm

    for family in families:
        record = {"probe": "liger", "family": family}
        try:
            folder = build_tiny_vlm(family, Path(tempfile.mkdtemp()) / family)
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16).cuda()
            apply_liger_kernel(model, {})
            ids = torch.randint(10, 100, (2, 32), device="cuda")
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            record.update(ok=True, loss=float(loss))
        except Exception as error:
            record.update(ok=False, error="".join(traceback.format_exception_only(error)).strip()[-600:])
        emit(out, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--families", default="qwen2_5_vl,qwen3_vl,llava_onevision,llava_next_video,smolvlm,llava")
    args = parser.parse_args()
    emit(args.out, {"probe": "versions", "torch": torch.__version__, "gpu": torch.cuda.get_device_name()})
    probe_varlen(args.out)
    probe_liger(args.out, args.families.split(","))


if __name__ == "__main__":
    main()
