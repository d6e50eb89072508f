"""Checkpoints a run can always resume from: written whole or not at all, found again at every start.

    python -c "from vtt.checkpoints import newest_complete; print(newest_complete('outputs/runs/llava'))"

    start = resume_point(run, training)   # every start: the newest complete checkpoint of output_dir, or None
    atomic_saves(trainer)                 # each save goes to output_dir/.partial/, gets its marker, is renamed

The Hugging Face Trainer writes `checkpoint-N` in place, file by file: a job killed in the middle of a
save leaves a folder that looks like a checkpoint and cannot be loaded. Here every save is written into
a staging folder, every rank waits for the others, then rank 0 writes the completion marker
(`vtt-checkpoint.json`: step, world size, time) into it and renames it to `checkpoint-N` in one step.
A `checkpoint-*` folder without its marker is never resumed from, and removed at the next start.

The marker records how many processes wrote the checkpoint: DeepSpeed's ZeRO optimizer states are
partitioned per process, so a resume on another GPU count fails at start with the conversion to
DeepSpeed's universal checkpoint spelled out, not with a shape error deep inside DeepSpeed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vtt import ranks
from vtt.runlog import write_atomically

MARKER = "vtt-checkpoint.json"
STAGING = ".partial"  # under output_dir: Path.glob("checkpoint-*") and the Trainer's rotation never see it
PREFIX = "checkpoint-"
WRONG_WORLD_EXIT = 2  # as a bad argument: nothing a requeue would fix


def step_of(folder: Path) -> int | None:
    suffix = folder.name[len(PREFIX) :]
    return int(suffix) if folder.name.startswith(PREFIX) and suffix.isdigit() else None


def marker_of(folder: Path) -> dict[str, Any] | None:
    """The completion marker of a checkpoint folder, or None when it has none (an incomplete save)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Every `checkpoint-N` folder in output_dir, oldest step first, complete or not."""
    found = [p for p in Path(output_dir).glob(f"{PREFIX}*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def newest_complete(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step that has its completion marker."""
    complete = [p for p in checkpoints(output_dir) if marker_of(p) is not None]
    return complete[-1] if complete else None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete the staging folder and every checkpoint without a marker (a save cut short); returns them."""
    output_dir = Path(output_dir)
    removed = [p for p in checkpoints(output_dir) if marker_of(p) is None]
    staging = output_dir / STAGING
    if staging.is_dir() and any(staging.iterdir()):
        removed.append(staging)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _universal_ready(folder: Path, training) -> bool:
    """The checkpoint was converted with ds_to_universal and the DeepSpeed config loads universal checkpoints."""
    config = training.hf_deepspeed_config.config if getattr(training, "hf_deepspeed_config", None) else {}
    return (folder / "latest_universal").is_file() and bool(config.get("checkpoint", {}).get("load_universal"))


def check_world_size(folder: Path, world: int, training) -> None:
    """A ValueError that says how to convert the checkpoint when it was written by another process count."""
    written = (marker_of(folder) or {}).get("world_size")
    if not training.deepspeed or written in (None, world) or _universal_ready(folder, training):
        return
    tag = (folder / "latest").read_text().strip() if (folder / "latest").is_file() else f"global_step{step_of(folder)}"
    raise ValueError(
        f"{folder} was written by {written} process(es), this run has {world}: DeepSpeed's ZeRO optimizer states "
        f"are split per process and cannot be loaded as they are. Either run on {written} process(es) again, or "
        f"convert it to DeepSpeed's universal checkpoint: "
        f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {folder / tag} "
        f"--output_folder {folder / (tag + '_universal')} "
        f'and add "checkpoint": {{"load_universal": true}} to the DeepSpeed config ({training.deepspeed}); '
        f"or start fresh with --resume false"
    )


def resume_point(run, training) -> str | None:
    """Where this start resumes from: the newest complete checkpoint of output_dir (None: from the start).

    Rank 0 removes incomplete saves first and says what it found in the log; every rank gets the same
    answer. With `resume: false` nothing is resumed (existing checkpoints are replaced as steps are saved).
    When the checkpoint needs another process count, rank 0 prints why and how to convert it and every
    rank exits 2 (bad input: a requeue would fail the same way).
    """
    from vtt.config import world_size

    output_dir = Path(training.output_dir)

    def find() -> str | None:
        for folder in remove_incomplete(output_dir):
            print(f"vtt resume: removed {folder}: a save that did not finish (no {MARKER})", flush=True)
        newest = newest_complete(output_dir)
        if newest is None:
            return None
        if not run.resume:
            print(f"vtt resume: --resume false: starting from step 0, not from {newest}", flush=True)
            return None
        check_world_size(newest, world_size(), training)
        print(f"vtt resume: resuming from {newest} (step {step_of(newest)})", flush=True)
        return str(newest)

    try:
        return ranks.from_rank0(find)
    except (ValueError, RuntimeError) as err:  # RuntimeError: rank 0's ValueError, as the other ranks see it
        if ranks.rank() == 0:
            print(f"vtt resume: error: {err}", flush=True)
        raise SystemExit(WRONG_WORLD_EXIT) from None


def _publish(staged: Path, final: Path, step: int, world: int, limit: int | None) -> None:
    """Rank 0: marker into the staged folder, rename it into place, keep the newest `limit` checkpoints."""
    record = {"step": step, "world_size": world, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomically(staged / MARKER, json.dumps(record, indent=2) + "\n")
    if final.exists():  # a checkpoint of the same step from a run started with --resume false
        shutil.rmtree(final)
    staged.rename(final)
    _hand_over_leftovers(staged.parent, final.parent)
    staged.parent.rmdir()  # empty now; one left behind holds a save that was cut short
    if limit and limit > 0:
        for old in [p for p in checkpoints(final.parent) if marker_of(p) is not None][:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def _hand_over_leftovers(staging: Path, output_dir: Path) -> None:
    """Move what the save wrote beside the checkpoint into output_dir, where it was meant to go.

    The Trainer's subclasses write into args.output_dir during the save too: TRL's SFTTrainer writes its
    model card (README.md) there before each checkpoint. Left in the staging folder, it kept the folder
    from being removed (`OSError: Directory not empty`), and every llava run crashed at its first save.
    """
    for leftover in list(staging.iterdir()):
        target = output_dir / leftover.name
        if leftover.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(leftover, target)


def atomic_saves(trainer) -> None:
    """Make every checkpoint `trainer` writes land in output_dir whole, with its marker, or not at all.

    The Trainer's own save (model, optimizer and DeepSpeed states, scheduler, RNG, trainer state) writes
    into output_dir/.partial/checkpoint-N; the Trainer names the folder from args.output_dir, so that is
    pointed at the staging folder for the length of the save. The Trainer's own rotation then only sees
    the staging folder: save_total_limit is applied here, to complete checkpoints.
    """
    save = trainer._save_checkpoint  # the Trainer's save; it has no argument for where to write

    def staged_save(model, trial, *args, **kwargs):
        args_ = trainer.args
        output_dir = Path(args_.output_dir)
        step = trainer.state.global_step
        args_.output_dir = str(output_dir / STAGING)
        try:
            save(model, trial, *args, **kwargs)
        finally:
            args_.output_dir = str(output_dir)
        staged, final = output_dir / STAGING / f"{PREFIX}{step}", output_dir / f"{PREFIX}{step}"
        ranks.gather(None)  # every rank's shards and RNG state are on disk before the marker says so
        if trainer.is_world_process_zero():
            _publish(staged, final, step, args_.world_size, args_.save_total_limit)
        best = trainer.state.best_model_checkpoint
        if best and best.startswith(str(output_dir / STAGING)):
            trainer.state.best_model_checkpoint = str(output_dir / Path(best).name)
        ranks.gather(None)  # no rank reads or writes output_dir before the rename is done

    trainer._save_checkpoint = staged_save
