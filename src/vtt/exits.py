"""Exit codes of vtt's training processes, and which of them a Slurm job requeues: the one table.

    python -c "from vtt.exits import Exit; print([(e.value, e.name, e.requeue) for e in Exit])"

The job script (vtt/cluster/job.sh.j2) reads `requeue` from here: a stopped run resumes from its last
checkpoint, while a bad input, a full disk or a failed push would fail the same way again.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """A training process's exit code; `meaning` is what the README's table says about it."""

    def __new__(cls, code: int, requeue: bool, meaning: str):
        member = int.__new__(cls, code)
        member._value_ = code
        member.requeue = requeue
        member.meaning = meaning
        return member

    DONE = 0, False, "trained (and pushed, when push_to_hub is set)"
    BAD_INPUT = 2, False, "a bad argument, config, token or checkpoint: the message says which and the fix"
    PUSH_FAILED = 3, False, "trained and saved, but the Hub push failed after its retries: `vtt push` retries it"
    SAVE_FAILED = 4, False, "a checkpoint's adapter does not hold the trained weights (ZeRO-3 saved it empty)"
    DISK_FULL = 28, False, "the next save would not fit on the disk (errno ENOSPC): nothing half-written"
    STOPPED = 75, True, "stopped by a signal after saving a checkpoint: requeue and resume from it"


# What the job script must not requeue, even after Slurm's warning signal.
NO_REQUEUE = tuple(code for code in Exit if code and not code.requeue)
