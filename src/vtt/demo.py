"""The embedded default (`vtt demo`, `make demo`): tiny random models, synthetic videos, both trainers.

    vtt demo [--out outputs/demo] [--gpus N]

Builds a tiny LLaVA and a tiny NLLB-architecture model from configs, writes synthetic videos, trains
both through the deepspeed launcher with ZeRO-2 (CPU processes here, GPUs where there are some),
then prints the first and last loss of each and where everything was saved. No network, no token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vtt.cluster.local import train_locally
from vtt.files import shipped

CONFIGS = {"llava": "jobs/tiny-llava.yaml", "seq2seq": "jobs/tiny-seq2seq.yaml"}


def build_inputs(out: Path) -> dict[str, Path]:
    """Tiny models and the synthetic videos under `out`; returns their paths."""
    from vtt.data.synthetic import write_demo_videos
    from vtt.models.tiny import build_tiny_llava, build_tiny_nllb

    return {
        "manifest": write_demo_videos(out / "videos"),
        "llava": build_tiny_llava(out / "models" / "tiny-llava"),
        "seq2seq": build_tiny_nllb(out / "models" / "tiny-nllb"),
    }


def losses(run_dir: Path) -> list[float]:
    """The training losses logged in a finished run's trainer_state.json, in step order."""
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="where models, videos, runs go")
    parser.add_argument("--gpus", type=int, default=None, help="processes per trainer (default: all GPUs, or 1)")
    parser.add_argument("--trainer", choices=list(CONFIGS), action="append", help="train only this one")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import torch

    gpus = args.gpus or max(torch.cuda.device_count(), 1)
    out = args.out.resolve()
    inputs = build_inputs(out)
    summary = []
    for trainer in args.trainer or list(CONFIGS):
        run_dir = out / "runs" / f"tiny-{trainer}"
        overrides = [
            "--model_name_or_path",
            str(inputs[trainer]),
            "--dataset",
            str(inputs["manifest"]),
            "--output_dir",
            str(run_dir),
            *extra,
        ]
        code = train_locally(shipped(CONFIGS[trainer]), gpus, overrides, log=run_dir / "train.log")
        if code:
            print(f"vtt demo: the {trainer} trainer failed (exit {code}); its log: {run_dir / 'train.log'}")
            return code
        summary.append((trainer, losses(run_dir), run_dir))
    print(f"\nvtt demo: trained on {gpus} process(es) with ZeRO-2; videos in {out / 'videos'}")
    for trainer, values, run_dir in summary:
        print(f"  {trainer:8s} loss {values[0]:.3f} -> {values[-1]:.3f}  model, logs: {run_dir}")
    return 0
