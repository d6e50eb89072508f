"""Throughput of a training run: tokens/s per GPU, the share of step time spent waiting for data,
peak GPU memory, and the time from launch to the first optimizer step.

Both trainers add `ThroughputCallback`; it logs `tokens_per_second_per_gpu` and `data_wait_share`
with the losses and writes `throughput.json` into the output folder at the end (rank 0).
`vtt run` sets VTT_LAUNCH_TIME so the first-step time counts the launcher and the model load.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

LAUNCH_TIME_ENV = "VTT_LAUNCH_TIME"


def _sync() -> None:
    # Step times must include the GPU work, not only its queueing.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class ThroughputCallback(TrainerCallback):
    """Times every optimizer step; the gap between one step's end and the next step's start is data wait."""

    def __init__(self, skip_steps: int = 3):
        self.skip_steps = skip_steps  # warm-up steps left out of the steady state
        self.launch = float(os.environ.get(LAUNCH_TIME_ENV, time.time()))
        self.begins: list[float] = []
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.first_step_s: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.ends.append(time.perf_counter())
        self.tokens.append(state.num_input_tokens_seen)
        if self.first_step_s is None:
            self.first_step_s = time.time() - self.launch

    def summary(self, world_size: int) -> dict:
        """Steady-state figures over the steps after the warm-up."""
        k = min(self.skip_steps, max(len(self.ends) - 2, 0))
        ends, begins, tokens = np.array(self.ends[k:]), np.array(self.begins[k:]), np.array(self.tokens[k:])
        out = {"steps": len(self.ends), "first_step_s": round(self.first_step_s or 0.0, 1), "world_size": world_size}
        if len(ends) >= 2:
            step = np.diff(ends)
            wait = begins[1:] - ends[:-1]
            out.update(
                step_s=round(float(np.median(step)), 4),
                data_wait_share=round(float(wait.sum() / step.sum()), 4),
            )
            if tokens[-1] > tokens[0]:
                out["tokens_per_second_per_gpu"] = round(float((tokens[-1] - tokens[0]) / step.sum() / world_size), 1)
        if torch.cuda.is_available():
            out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return out

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs and len(self.ends) > self.skip_steps + 1:
            summary = self.summary(args.world_size)
            for key in ("tokens_per_second_per_gpu", "data_wait_share"):
                if key in summary:
                    logs[key] = summary[key]
                    # The Trainer appended this log to log_history before calling us: keep the two the same.
                    if state.log_history and state.log_history[-1].get("step") == state.global_step:
                        state.log_history[-1][key] = summary[key]

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / "throughput.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.summary(args.world_size), indent=2) + "\n")
            tmp.replace(path)
