"""Checkpoints a run can always resume from: marked complete only after every rank's save, found again at
every start.

    python -c "from vtt.train.checkpoints import newest_complete; print(newest_complete('outputs/runs/llava'))"

    start = resume_point(run, training)           # every start: the newest complete checkpoint, or None
    Trainer(callbacks=[CompleteCheckpoints(keep)])  # each save gets its marker, then the oldest are removed

The Hugging Face Trainer writes `checkpoint-N` in place, file by file: a job killed in the middle of a
save leaves a folder that looks like a checkpoint and cannot be loaded. So after each save (the Trainer's
public `on_save` hook) every rank waits for the others, then rank 0 writes the completion marker
(vtt.files.CHECKPOINT_MARKER: step, world size, time) into it. A `checkpoint-*` folder without its marker
is never resumed from, and removed at the next start.

`save_total_limit` is applied here, after the marker, to complete checkpoints: the Trainer's own rotation
runs inside its save, before the new checkpoint is complete, and with a limit of 1 a kill at that moment
left no checkpoint to resume from. The harness hands the limit to CompleteCheckpoints instead.

The marker records how many processes wrote the checkpoint: DeepSpeed's ZeRO optimizer states are
partitioned per process, so a resume on another GPU count first converts the checkpoint to DeepSpeed's
universal checkpoint (`to_universal`: rank 0, once, into a staging folder renamed beside the original; the
other ranks wait) and gives DeepSpeed `"checkpoint": {"load_universal": true}` for this start only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from vtt import collective
from vtt.config import world_size
from vtt.exits import Exit
from vtt.files import (
    CHECKPOINT_MARKER,
    CHECKPOINT_PREFIX,
    checkpoint_marker,
    checkpoints,
    complete_checkpoints,
    step_of,
    write_atomically,
)
from vtt.models import adapters


def newest_complete(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step that has its completion marker."""
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete every checkpoint without a marker (a save cut short); returns them."""
    removed = [p for p in checkpoints(output_dir) if checkpoint_marker(p) is None]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


UNIVERSAL_LATEST = "latest_universal"  # DeepSpeed's pointer to the universal tag, as `latest` is to the ZeRO one
UNIVERSAL_STAGING = ".universal-staging"


def zero_tag(folder: Path) -> str:
    """The ZeRO checkpoint's folder inside a Trainer checkpoint (global_stepN), as DeepSpeed's `latest` names it."""
    latest = folder / "latest"
    return latest.read_text().strip() if latest.is_file() else f"global_step{step_of(folder)}"


def universal_tag(folder: Path) -> str | None:
    """The universal checkpoint in `folder` when a conversion finished (its pointer names a folder there), else None."""
    latest = folder / UNIVERSAL_LATEST
    tag = latest.read_text().strip() if latest.is_file() else ""
    return tag if tag and (folder / tag).is_dir() else None


def needs_universal(folder: Path, world: int, training) -> bool:
    """The checkpoint holds ZeRO states split for another process count than this run's `world`."""
    written = (checkpoint_marker(folder) or {}).get("world_size")
    return bool(training.deepspeed) and written not in (None, world)


def to_universal(folder: Path) -> str:
    """Convert the ZeRO checkpoint in `folder` to DeepSpeed's universal checkpoint; returns its tag.

    Once: a finished conversion is reused. Atomically: ds_to_universal writes into a staging folder that is
    renamed to `<tag>_universal` beside the original when it is whole, and only then does `latest_universal`
    name it, so a kill mid-conversion leaves the checkpoint as it was (the next start converts again).
    Hugging Face checkpoints lack the universal-checkpoint info Megatron writes: --inject_missing_state adds it.
    A failed conversion is a ValueError carrying the converter's output.
    """
    done = universal_tag(folder)
    if done:
        return done
    tag = zero_tag(folder)
    target = f"{tag}_universal"
    staging = folder / UNIVERSAL_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(folder / target, ignore_errors=True)  # a rename cut short has no pointer: redo it whole
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(folder / tag)]
    command += ["--output_folder", str(staging / target), "--inject_missing_state", "--num_extract_workers", "2"]
    command += ["--num_merge_workers", "1"]
    print(f"vtt resume: converting {folder / tag} to a universal checkpoint: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(
            f"converting {folder / tag} to DeepSpeed's universal checkpoint failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}\nRun on the process count that wrote it, or start "
            f"fresh with --resume false"
        )
    (staging / target).rename(folder / target)
    write_atomically(folder / UNIVERSAL_LATEST, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def load_universal(training) -> None:
    """Every rank: DeepSpeed loads this start's checkpoint from its universal tag (the config the Trainer hands
    to deepspeed.initialize, not the file: the next start on the writing process count loads it as saved)."""
    config = getattr(training, "hf_deepspeed_config", None)
    if config is None:
        raise ValueError(f"{training.deepspeed}: the Trainer has not read the DeepSpeed config yet")
    config.config.setdefault("checkpoint", {})["load_universal"] = True


def resume_point(run, training) -> str | None:
    """Where this start resumes from: the newest complete checkpoint of output_dir (None: from the start).

    Rank 0 removes incomplete saves first and says what it found in the log; every rank gets the same
    answer. With `resume: false` nothing is resumed (existing checkpoints are replaced as steps are saved).
    When the checkpoint was written by another process count, rank 0 converts it to a universal checkpoint
    while the others wait, and every rank loads it as one; a failed conversion makes every rank exit 2.
    """
    output_dir = Path(training.output_dir)

    def find() -> tuple[str | None, bool]:
        for folder in remove_incomplete(output_dir):
            print(f"vtt resume: removed {folder}: a save that did not finish (no {CHECKPOINT_MARKER})", flush=True)
        newest = newest_complete(output_dir)
        if newest is None:
            return None, False
        if not run.resume:
            print(f"vtt resume: --resume false: starting from step 0, not from {newest}", flush=True)
            return None, False
        universal = needs_universal(newest, world_size(), training)
        if universal:
            written = checkpoint_marker(newest)["world_size"]
            tag = to_universal(newest)
            print(
                f"vtt resume: {newest} was written by {written} process(es), this run has {world_size()}: "
                f"loading its universal checkpoint {newest / tag}",
                flush=True,
            )
        print(f"vtt resume: resuming from {newest} (step {step_of(newest)})", flush=True)
        return str(newest), universal

    try:
        point, universal = collective.from_rank0(find)
        if universal:
            load_universal(training)
        return point
    except (ValueError, RuntimeError) as err:  # RuntimeError: rank 0's ValueError, as the other ranks see it
        if collective.is_rank0():
            print(f"vtt resume: error: {err}", flush=True)
        raise SystemExit(Exit.BAD_INPUT) from None


def check_saved_adapter(folder: Path, model) -> None:
    """Every rank: when `model` trains an adapter, the adapter saved in `folder` must equal the trained one, or
    every rank exits SAVE_FAILED before the checkpoint is marked complete (ZeRO-3 saving empty partitions
    fails here, at its first save, not when someone loads the adapter weeks later)."""
    if not hasattr(model, "peft_config"):
        return
    from peft import get_peft_model_state_dict

    import deepspeed

    adapter = [p for p in model.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(adapter):  # whole tensors under ZeRO-3; a no-op otherwise
        trained = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}
    problems = collective.from_rank0(lambda: adapters.saved_adapter_problems(folder, trained))
    if problems:
        if collective.is_rank0():
            listing = "\n".join(f"  {line}" for line in problems[:10])
            print(
                f"vtt checkpoint: error: the adapter saved in {folder} is not the trained one:\n{listing}", flush=True
            )
        raise SystemExit(Exit.SAVE_FAILED)


class CompleteCheckpoints(TrainerCallback):
    """After every save: all ranks wait until each one's shards and RNG state are on disk, then rank 0 writes
    the completion marker and keeps the newest `keep` complete checkpoints (None or 0: all of them)."""

    def __init__(self, keep: int | None):
        self.keep = keep

    def on_step_end(self, args, state, control, **kwargs):
        # Last of the callbacks, so the save decision is final: a folder of this step from a run started with
        # --resume false loses its marker before the save writes over it, as a half-written one must.
        if control.should_save and collective.is_rank0():
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            (folder / CHECKPOINT_MARKER).unlink(missing_ok=True)

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        collective.gather(None)
        check_saved_adapter(folder, model)
        if collective.is_rank0():
            record = {
                "step": state.global_step,
                "world_size": args.world_size,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_atomically(folder / CHECKPOINT_MARKER, json.dumps(record, indent=2) + "\n")
            if self.keep and self.keep > 0:
                kept = {folder, Path(state.best_model_checkpoint or folder)}
                for old in complete_checkpoints(args.output_dir)[: -self.keep]:
                    if old not in kept:
                        shutil.rmtree(old, ignore_errors=True)
        collective.gather(None)  # no rank reads output_dir before the marker is there
