"""The configs a training run really used, saved into its output_dir for `vtt report` and `vtt predict`.

    vtt report outputs/demo/runs/tiny-llava     # reads vtt-run.json and deepspeed.json from there

Both trainers add `RunRecord`. Once training has started (when the Trainer has filled DeepSpeed's
"auto" values) it writes the resolved run config and the DeepSpeed config on rank 0, atomically,
with every *_token field and every secret of the environment masked.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

RUN_RECORD = "vtt-run.json"
DEEPSPEED_RECORD = "deepspeed.json"
MASK = "<redacted>"


def write_atomically(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def masked(value: Any, secrets: list[str]) -> Any:
    """`value` with every *_token field and every occurrence of a secret replaced by MASK."""
    if isinstance(value, dict):
        return {
            key: MASK if key.endswith("_token") and isinstance(item, str) else masked(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(item, secrets) for item in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
    return value


def secrets_in_environment() -> list[str]:
    names = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
    return [os.environ[name] for name in names if os.environ.get(name)]


def deepspeed_config(args) -> dict[str, Any] | None:
    """The DeepSpeed config after the Trainer filled its "auto" values, or None without DeepSpeed."""
    ds = getattr(args, "hf_deepspeed_config", None)
    return dict(ds.config) if ds is not None else None


class RunRecord(TrainerCallback):
    """Save the run config and the DeepSpeed config actually used into output_dir (rank 0, at train start)."""

    def __init__(self, trainer: str, run: Any, task: Any):
        self.trainer, self.run, self.task = trainer, run, task

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        secrets = secrets_in_environment()
        ds = deepspeed_config(args)
        record = {
            "trainer": self.trainer,
            "world_size": args.world_size,
            "run": asdict(self.run),
            "task": asdict(self.task),
            "training": args.to_dict(),
            "deepspeed": ds,
        }
        out = Path(args.output_dir)
        write_atomically(out / RUN_RECORD, json.dumps(masked(record, secrets), indent=2, default=str) + "\n")
        if ds is not None:
            write_atomically(out / DEEPSPEED_RECORD, json.dumps(masked(ds, secrets), indent=2, default=str) + "\n")
