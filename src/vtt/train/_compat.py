"""Every patch of a dependency's private API in the trainers, with the version it was written for.

tests/test_compat.py fails when an upgrade changes what a patch relies on. Written for:
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WRITTEN_FOR = {"deepspeed": "0.19.8", "accelerate": "1.15.0"}
SHM_OP = "deepspeed_shm_comm"


def disable_cpu_shared_memory_all_reduce() -> None:
    """Mark DeepSpeed's CPU shared-memory all-reduce op unavailable, so gloo does every reduction.

    On the CPU, DeepSpeed's backend JIT-compiles that op at every start and leaves its 69 MB buffer in
    /dev/shm per rank when the process ends (never unlinked): a few hundred test launches filled a 24 GB
    machine's memory. Training never uses it (only `inference_all_reduce` does). `build_shm_op()` returns
    None for an op that `deepspeed.ops.__compatible_ops__` (probed once per process) marks incompatible;
    there is no public switch.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_OP] = False


def wrap_optimizer_step(optimizer: Any, around: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Replace the step of the optimizer that really steps with `around(step)`; False when there is none.

    The Trainer's `on_optimizer_step` hook times nothing under DeepSpeed: accelerate's wrapper steps as a
    no-op there, while DeepSpeed's engine steps its ZeRO optimizer at the end of the backward pass. That
    optimizer is the one accelerate's AcceleratedOptimizer holds as `.optimizer` (torch's, without DeepSpeed).
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if inner is None:
        return False
    inner.step = around(inner.step)
    return True
