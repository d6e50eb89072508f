"""Throughput of a training run: tokens/s per GPU, the share of step time spent waiting for data,
peak GPU memory, the memory the model states hold between steps, and the time from launch to the
first optimizer step.

Both trainers add `ThroughputCallback`; it logs `tokens_per_second_per_gpu` and `data_wait_share`
with the losses and writes `throughput.json` into the output folder at the end (rank 0).
`vtt run` sets VTT_LAUNCH_TIME so the first-step time counts the launcher and the model load.

`VTT_PROFILE_STEPS=6-8` (any run) adds `ProfileCallback`: torch's profiler records those optimizer
steps and each rank writes `profile-rank<N>.txt` to the output folder: where the GPU time went, by
kind of kernel, the longest stretches with the GPU idle and what the CPU was doing, the top kernels.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from vtt import collective
from vtt.files import write_atomically
from vtt.train._compat import wrap_optimizer_step

LAUNCH_TIME_ENV = "VTT_LAUNCH_TIME"
PROFILE_ENV = "VTT_PROFILE_STEPS"


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
        self.held_bytes = 0  # GPU memory still allocated after a step: model states and ZeRO's buffers
        self.step_peak_bytes = 0  # the most allocated during an optimizer step: the model states' peak
        self.peak_before_bytes = 0  # the overall peak, kept across the resets around the optimizer step

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        # accelerate's wrapper holds the optimizer that steps: DeepSpeed's ZeRO optimizer, which its
        # engine calls at the end of the backward pass, or torch's
        if torch.cuda.is_available():
            wrap_optimizer_step(optimizer, self._measured)

    def _measured(self, step):
        def measured_step(*a, **kw):
            # activations are freed by now: what the step allocates on top of what is held is model state
            self.peak_before_bytes = max(self.peak_before_bytes, torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
            try:
                return step(*a, **kw)
            finally:
                self.step_peak_bytes = max(self.step_peak_bytes, torch.cuda.max_memory_allocated())

        return measured_step

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.ends.append(time.perf_counter())
        self.tokens.append(state.num_input_tokens_seen)
        if torch.cuda.is_available():  # activations are freed; the optimizer has its states by now
            self.held_bytes = max(self.held_bytes, torch.cuda.memory_allocated())
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
            peak = max(self.peak_before_bytes, torch.cuda.max_memory_allocated())
            out["peak_memory_gb"] = round(peak / 2**30, 2)
            # in GB (1e9 bytes) as vtt check counts them
            out["memory_between_steps_gb"] = round(self.held_bytes / 1e9, 2)
            out["model_states_peak_gb"] = round(self.step_peak_bytes / 1e9, 2)
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
        if collective.is_rank0():
            write_atomically(
                Path(args.output_dir) / "throughput.json", json.dumps(self.summary(args.world_size), indent=2) + "\n"
            )


# Kernel name patterns, first match wins: what kind of work a GPU kernel does.
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "matmul", "addmm", "::mm", "linear")),
    ("communication", ("nccl", "allreduce", "all_gather", "reduce_scatter")),
    ("optimizer", ("adam", "multi_tensor", "optimizer")),
    ("triton (fused)", ("triton",)),
    ("copy", ("copy", "memcpy", "memset", "cat", "fill")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "elementwise/other")


def parse_steps(text: str) -> tuple[int, int]:
    """'6-8' or '6' -> (first, last) optimizer step, counting from 1."""
    first, _, last = text.partition("-")
    try:
        steps = int(first), int(last or first)
    except ValueError:
        steps = (0, -1)
    if not 1 <= steps[0] <= steps[1]:
        raise ValueError(f"{PROFILE_ENV}={text!r}: give optimizer steps as FIRST-LAST, e.g. 6-8 (from 1)")
    return steps


class ProfileCallback(TrainerCallback):
    """torch.profiler over optimizer steps `first`..`last`; writes a summary per rank to the output folder."""

    def __init__(self, steps: str):
        self.first, self.last = parse_steps(steps)
        self.profiler = None
        self.started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.first and self.profiler is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            _sync()
            # with_stack: the Python frame of what the CPU was doing while the GPU sat idle
            self.profiler = torch.profiler.profile(activities=activities, with_stack=True)
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step >= self.last:
            self._write(args, state.global_step - self.first + 1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.profiler is not None:  # the run ended inside the window: summarise what was recorded
            self._write(args, state.global_step - self.first + 1)

    def _write(self, args, steps: int) -> None:
        _sync()
        wall = time.perf_counter() - self.started
        self.profiler.__exit__(None, None, None)
        path = Path(args.output_dir) / f"profile-rank{args.process_index}.txt"
        write_atomically(path, summarize(self.profiler, wall, steps))
        self.profiler = None


def _is_kernel(event) -> bool:
    # record_function ranges (Optimizer.step, ...) show on the GPU too, over the kernels they launched
    return event.device_type == torch.autograd.DeviceType.CUDA and not getattr(event, "is_user_annotation", False)


def summarize(profiler, wall_s: float, steps: int, top: int = 30) -> str:
    """Device time by kind of kernel against the steps' wall time, then the top kernels (or CPU ops)."""
    events = profiler.key_averages()
    # The kernels themselves on a GPU (the ops that launched them carry the same time again), else CPU ops
    kernels = [e for e in events if _is_kernel(e)]
    on_gpu = any(e.self_device_time_total > 0 for e in kernels)

    def self_us(e) -> float:
        return e.self_device_time_total if on_gpu else e.self_cpu_time_total

    # self time: a parent op's children are not counted twice
    leaves = [e for e in (kernels if on_gpu else events) if self_us(e) > 0]
    kinds: dict[str, float] = {}
    for e in leaves:
        kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + self_us(e)
    busy = sum(kinds.values()) / 1e6
    where = "GPU kernels" if on_gpu else "CPU ops (no GPU; summed over threads, so it can pass the wall time)"
    lines = [f"{steps} step(s), {wall_s:.3f} s wall, {wall_s / steps:.3f} s a step; {where}: {busy:.3f} s busy"]
    lines.append(f"{'kind':20s} {'s':>9s} {'% of wall':>9s}")
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"{kind:20s} {us / 1e6:9.3f} {us / 1e6 / wall_s:9.1%}")
    if on_gpu:  # one GPU stream at a time, so the rest of the wall time had no kernel
        lines.append(f"{'idle (wall - busy)':20s} {wall_s - busy:9.3f} {1 - busy / wall_s:9.1%}")
        lines += idle_gaps(profiler.events())
    lines.append("")
    lines.append(f"{'s':>9s} {'calls':>7s}  top {top} {'kernels' if on_gpu else 'ops'} by self time")
    for e in sorted(leaves, key=self_us, reverse=True)[:top]:
        lines.append(f"{self_us(e) / 1e6:9.3f} {e.count:7d}  {e.key[:150]}")
    return "\n".join(lines) + "\n"


def idle_gaps(events, top: int = 12, min_us: float = 200.0) -> list[str]:
    """The longest stretches with no kernel on the GPU, each with the CPU ops running at its middle
    (outermost first) and the Python frames of the innermost: what the GPU was waiting for."""
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events if _is_kernel(e))
    gaps, busy_until = [], kernels[0][1] if kernels else 0
    for start, end in kernels[1:]:
        if start > busy_until + min_us:
            gaps.append((busy_until, start))
        busy_until = max(busy_until, end)
    total = sum(b - a for a, b in gaps)
    lines = ["", f"GPU idle stretches over {min_us / 1e3:g} ms: {len(gaps)}, {total / 1e6:.3f} s in all; the longest:"]
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    for a, b in sorted(gaps, key=lambda g: g[0] - g[1])[:top]:
        middle = (a + b) / 2
        running = sorted(
            (e for e in cpu if e.time_range.start <= middle <= e.time_range.end), key=lambda e: e.time_range.start
        )
        chain = " > ".join(e.name for e in running[-6:]) or "(no op: Python between ops)"
        lines.append(f"  {(b - a) / 1e3:8.2f} ms  {chain[:240]}")
        frames = [f for f in (running[-1].stack if running else []) if "site-packages" in f or "/vtt/" in f]
        lines += [f"               {f[-150:]}" for f in frames[:4]]
    return lines
