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

from vtt import collective
from vtt.files import DEEPSPEED_RECORD, RUN_RECORD, write_atomically

MASK = "<redacted>"


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

    def __init__(
        self,
        trainer: str,
        run: Any,
        task: Any,
        applied_by_vtt: dict[str, Any] | None = None,
        facts: dict[str, Any] | None = None,
    ):
        # applied_by_vtt: training arguments vtt takes over from the Trainer, recorded as the user gave them;
        # facts: what the trainer found out (the model's family, how it takes a clip, its visual tokens)
        self.trainer, self.run, self.task, self.applied_by_vtt = trainer, run, task, applied_by_vtt or {}
        self.facts = facts or {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not collective.is_rank0():
            return
        secrets = secrets_in_environment()
        ds = deepspeed_config(args)
        record = {
            "trainer": self.trainer,
            **self.facts,
            "world_size": args.world_size,
            "run": asdict(self.run),
            "task": asdict(self.task),
            "training": {**args.to_dict(), **self.applied_by_vtt},
            "deepspeed": ds,
        }
        out = Path(args.output_dir)
        write_atomically(out / RUN_RECORD, json.dumps(masked(record, secrets), indent=2, default=str) + "\n")
        if ds is not None:
            write_atomically(out / DEEPSPEED_RECORD, json.dumps(masked(ds, secrets), indent=2, default=str) + "\n")
