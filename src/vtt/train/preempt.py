"""Stop on a signal without losing work: finish the optimizer step, save a full checkpoint, exit 75.

    kill -USR1 <trainer pid>        # or SIGTERM; a Slurm job gets USR1 before its time limit (--signal)

Both trainers add `StopOnSignal`. Its handler only sets a flag (a handler runs between two bytecodes
of the main thread: anything more could tear a save in half). At the end of each optimizer step the
ranks share their flags, so that all of them stop at the same step even when the signal reached only
some; they then ask the Trainer for its own checkpoint (model, optimizer and DeepSpeed states,
scheduler, RNG, data position, trainer state) and to stop. After `trainer.train()` returns,
`exit_if_stopped()` ends the process with Exit.STOPPED.

Exit code 75 (EX_TEMPFAIL of sysexits.h, "try again later") means "stopped on a signal, checkpoint
saved": the job script requeues the job, and the next start resumes from that checkpoint.
"""

from __future__ import annotations

import signal

from transformers import TrainerCallback

from vtt import collective
from vtt.exits import Exit

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopOnSignal(TrainerCallback):
    """Turns SIGUSR1/SIGTERM into a checkpoint at the end of the current optimizer step, then a stop."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS):
        self.received: str | None = None
        self.stopped_at: int | None = None
        for number in signals:
            signal.signal(number, self._note)

    def _note(self, number, frame) -> None:
        self.received = signal.Signals(number).name

    def on_step_end(self, args, state, control, **kwargs):
        # Every rank asks every step: one rank stopping alone would leave the others in the next collective.
        asked = [name for name in collective.gather(self.received) if name]
        # At the last step the training ends anyway: the final model is saved, nothing is left to resume.
        if asked and self.stopped_at is None and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            if collective.is_rank0():
                print(
                    f"vtt preempt: {asked[0]} received: saving a checkpoint at step {state.global_step} "
                    f"of {state.max_steps} and stopping",
                    flush=True,
                )
        return control

    def exit_if_stopped(self) -> None:
        """After trainer.train(): when a signal stopped it, exit Exit.STOPPED on every rank (requeue me)."""
        if self.stopped_at is not None:
            if collective.is_rank0():
                print(
                    f"vtt preempt: checkpoint of step {self.stopped_at} saved; exit {Exit.STOPPED:d}: "
                    f"run again (or requeue) to resume from it",
                    flush=True,
                )
            raise SystemExit(Exit.STOPPED)
