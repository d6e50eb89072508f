"""What both trainers do before their model loads and after their Trainer is built.

    started = start(argv, "llava")       # checks that fail fast, the signal handler, the parsed run config
    ...                              # the trainer's own model, data and Trainer(callbacks=started.callbacks())
    fit(trainer, started, data=data, companion=processor, eval_options={"num_frames": 8})

Below the trainers, as video/data/config are: each trainer still builds its own model, data and Trainer.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtt import collective
from vtt.after import hub
from vtt.check import disk
from vtt.check.offline import check_at_start
from vtt.config import parse_run_config, read_command
from vtt.exits import Exit
from vtt.models import adapters
from vtt.outputs import hold_output
from vtt.train import checkpoints
from vtt.train.environment import prepare_deepspeed
from vtt.train.preempt import StopOnSignal
from vtt.train.runlog import RunRecord
from vtt.train.throughput import PROFILE_ENV, ProfileCallback, ThroughputCallback


@dataclass
class StartedRun:
    """A started run: its name, parsed arguments, and the pieces that stop or publish it."""

    trainer: str
    run: Any  # vtt's run arguments (dataset, model, ...)
    task: Any  # the trainer's own arguments (video sampling, or text languages and lengths)
    training: Any  # the Trainer's arguments
    stopper: StopOnSignal
    guard: Any  # disk.SaveGuard
    push: Any  # hub's plan for the final model, None when not pushing
    keep: int | None  # save_total_limit, applied by CompleteCheckpoints to complete checkpoints only
    load_options: dict[str, Any]  # extra from_pretrained options: QLoRA's quantisation and device map

    def adapt(self, model: Any) -> Any:
        """The loaded model with the run's adapter (use_peft), or as it is; rank 0 says what trains."""
        if not self.task.use_peft:
            return model
        if self.training.gradient_checkpointing:  # checkpointed blocks need inputs that require grad under peft
            model.enable_input_require_grads()
        model = adapters.wrap(model, self.task, self.trainer)
        if collective.is_rank0():
            print(f"vtt adapters: {adapters.trainable_summary(model)}", flush=True)
        return model

    def callbacks(self, **facts: Any) -> list[Any]:
        """The Trainer's callbacks; `facts` go into vtt-run.json beside the run config."""
        record = RunRecord(self.trainer, self.run, self.task, {"save_total_limit": self.keep}, facts)
        callbacks = [ThroughputCallback(), self.stopper, self.guard, record]
        if os.environ.get(PROFILE_ENV):
            callbacks.append(ProfileCallback(os.environ[PROFILE_ENV]))
        return [*callbacks, checkpoints.CompleteCheckpoints(self.keep)]  # last: it sees the final save decision


def start(argv: list[str] | None, trainer: str) -> StartedRun:
    """Parse `argv` (default: the command line) for `trainer`, after and before what must come first."""
    command = read_command(argv)  # the one read of the command line (argv None: this process's)
    prepare_deepspeed()  # before DeepSpeed builds an op: a parsable arch list, no leaking CPU shm op
    check_at_start(command)  # offline node: list what the cache lacks now, not after a failed load
    stopper = StopOnSignal()  # first: a signal during the model load stops the run at its first step
    run, task, training = parse_run_config(command)
    load = load_options(task, training)  # QLoRA off CUDA stops here, before the process group and any weight
    start_process_group(training)
    # Before any weight loads: a bad Hub token or a disk too small fails now, not after hours of training.
    push = hub.plan_model_push(command, run, training, trainer)
    disk.check_space(run, training, trainer, task)
    claim_output_dir(run, training)  # after the checks that refuse a run: a refused run leaves no folder behind
    guard = disk.guard_for(run, training, trainer, task)
    # The Trainer's rotation runs before a new checkpoint is complete: CompleteCheckpoints applies the limit.
    keep, training.save_total_limit = training.save_total_limit, None
    return StartedRun(trainer, run, task, training, stopper, guard, push, keep, load)


def load_options(task: Any, training: Any) -> dict[str, Any]:
    """from_pretrained's extra options for the run's adapter settings; exits 2 (bad input) where they cannot run,
    as QLoRA cannot without a GPU, before any weight loads."""
    try:
        return adapters.load_options(task, training)
    except ValueError as err:
        if collective.is_rank0():
            print(f"vtt run: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(Exit.BAD_INPUT) from None


def run_inputs(run: Any, training: Any) -> list[Path]:
    """What a run reads and output_dir must not hold: data (with a manifest's videos), the model, the DeepSpeed file."""
    from vtt.data.datasets import is_prepared
    from vtt.data.manifest import local_videos, manifest_entries

    inputs = [Path(p) for p in (run.dataset, run.eval_dataset, training.deepspeed) if isinstance(p, str)]
    if Path(run.model_name_or_path).exists():
        inputs.append(Path(run.model_name_or_path))
    for data in (run.dataset, run.eval_dataset):
        if data and Path(data).is_file() and not is_prepared(data):
            inputs += local_videos(data, *manifest_entries(data))
    return inputs


def claim_output_dir(run: Any, training: Any) -> None:
    """Rank 0 claims output_dir for the run's lifetime (vtt.outputs): never a folder holding the run's inputs or
    files vtt did not write, never two runs at once. Every rank exits 2 (bad input) with the reason otherwise."""

    def claim() -> None:  # returns nothing: the claim stays with rank 0, only its refusal travels to the others
        hold_output(training.output_dir, "run", run_inputs(run, training), "output_dir")

    try:
        collective.from_rank0(claim)
    except (ValueError, RuntimeError) as err:  # RuntimeError: rank 0's ValueError, as the other ranks see it
        if collective.is_rank0():
            print(f"vtt run: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(Exit.BAD_INPUT) from None


def start_process_group(training: Any) -> None:
    """The process group, before any weight loads: under ZeRO-3 from_pretrained partitions the weights as
    they load (deepspeed.zero.Init), and asks DeepSpeed's handle on the group for the world size. Left to
    the Trainer, zero.Init saw a world of 1 and refused the batch sizes."""
    training.device  # noqa: B018 TrainingArguments starts the group on first use of its device (gloo on CPU)
    if training.deepspeed:
        import torch

        import deepspeed

        if torch.distributed.is_initialized():
            deepspeed.init_distributed()  # wraps the group already there (accelerate does this on GPU only)


def fit(
    trainer: Any, started: StartedRun, *, data: dict[str, Any], companion: Any, eval_options: dict[str, Any]
) -> None:
    """Train `trainer` to the end and publish the result.

    companion: what rank 0 saves beside the model with `save_pretrained` (a processor, a generation config);
    data: the dataset facts for the model card; eval_options: extra arguments of `evaluate_model`.
    A signal or a full disk ends the process here with its exit code, after its checkpoint.
    """
    run, training = started.run, started.training
    result = trainer.train(resume_from_checkpoint=checkpoints.resume_point(run, training))
    started.guard.exit_if_stopped()
    started.stopper.exit_if_stopped()
    trainer.save_model()
    trainer.save_state()
    if collective.is_rank0():
        companion.save_pretrained(training.output_dir)
    if trainer.eval_dataset is not None:
        data = dict(data, eval_dataset=run.eval_dataset, eval_samples=len(trainer.eval_dataset))
    if run.eval_dataset and run.generate_eval and collective.is_rank0():
        # Imported here: vtt.after.evaluate comes after the trainers (it loads back the model they saved).
        from vtt.after.evaluate import evaluate_model
        from vtt.models._compat import hf_deepspeed_config_set_aside

        # Rank 0 loads the saved model whole: under a live ZeRO-3 config from_pretrained would partition it.
        with hf_deepspeed_config_set_aside():
            evaluate_model(
                training.output_dir,
                run.eval_dataset,
                batch_size=training.per_device_eval_batch_size,
                device="cpu" if training.use_cpu else None,
                **eval_options,
            )
    hub.push_model(
        started.push, training.output_dir, data, hub.final_metrics(trainer.state.log_history, result.metrics)
    )
