"""Decisions every process of a job must share: rank 0 decides (or every rank reports) and all act alike.

    answer = from_rank0(lambda: check_token())      # rank 0 runs it, every rank gets its result
    problems = gather(local_problem_or_none)         # one entry per rank

A check that fails on one rank and not on another would leave the others waiting in the next
collective forever; routing every such decision through here makes all ranks exit together.
The exchange runs on a gloo group of its own, so it works under NCCL too (objects stay on the CPU)
and can wait longer than the training group's timeout while rank 0 uploads a model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

# Rank 0 may spend hours uploading a large model while the others wait for its answer.
WAIT = timedelta(hours=24)

_group = None


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if distributed() else 0


def is_rank0() -> bool:
    """The process that decides for all: the one that writes shared files and prints the job's messages."""
    return rank() == 0


def _cpu_group():
    global _group
    if _group is None:
        import torch.distributed as dist

        _group = dist.new_group(backend="gloo", timeout=WAIT)
    return _group


def gather(value: Any) -> list[Any]:
    """`value` from every rank, in rank order ([value] outside a distributed job)."""
    if not distributed():
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value, group=_cpu_group())
    return values


def from_rank0(work: Callable[[], Any]) -> Any:
    """Run `work` on rank 0 only and return its result on every rank; the other ranks wait for it.

    An exception raised by `work` is re-raised on every rank as a RuntimeError with the same text
    (rank 0 keeps the original), so that no rank carries on alone.
    """
    if not distributed():
        return work()
    import torch.distributed as dist

    box: list[Any] = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", work())
        except BaseException as err:  # shared with the others below, then raised here too
            error = err
            box[0] = ("error", str(err))
    dist.broadcast_object_list(box, src=0, group=_cpu_group())
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise RuntimeError(value)
    return value


def closes_process_groups(main: Callable[..., Any]) -> Callable[..., Any]:
    """`main`, closing every process group (this module's gloo group included) however it ends.

    Left open, their communication threads can still be running when the interpreter exits, and the
    rank then dies with "terminate called without an active exception" (exit 250) instead of its own
    exit code: seen after a finished 2-node Slurm job, and after every rank exited 2 on a refused Hub
    token. A 250 in place of 75 would also keep a stopped job from requeueing itself.
    A finished `main` waits for every rank first (rank 0 may still be pushing the model); one that
    raised, SystemExit included, closes at once: the other ranks may never reach a barrier.
    """

    @functools.wraps(main)
    def closing(*args: Any, **kwargs: Any) -> Any:
        try:
            result = main(*args, **kwargs)
        except BaseException:
            close()
            raise
        if distributed():
            import torch.distributed as dist

            dist.barrier(group=_cpu_group())
        close()
        return result

    return closing


def close() -> None:
    """Close all process groups now, without waiting for the other ranks."""
    global _group
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _group = None
