"""Disk space: will a run's checkpoints and caches fit, before it starts and before each save?

    needs = estimate(run, training, "llava")     # what the run will write, per folder
    check_fits(needs)                            # ValueError with the numbers and the fix (`vtt check`)
    check_space(run, training, "llava", task)    # the trainers' start: every rank exits 28 when it cannot fit
    SaveGuard()                                  # a TrainerCallback: skips a save that would not fit and stops

Exit code 28 (ENOSPC's errno) means "stopped for lack of disk space": the last complete checkpoint
is intact, and a Slurm requeue loop must not requeue the job (it would fail the same way).

The estimate counts the parameters from the model config on the meta device (no weights loaded):
a checkpoint holds the weights (2 bytes a parameter under DeepSpeed with bf16/fp16; without DeepSpeed
as the model loads, in its checkpoint's dtype: 2 for a bf16 one, else 4), under ZeRO-1/2 a second copy of
them in DeepSpeed's module states, and the optimizer states: 12 bytes a parameter under DeepSpeed (fp32
master weights + Adam's two moments), without it Adam's two moments in the weights' dtype (8 or 4).

An adapter run (use_peft, `task` given) saves its adapter only, T trainable parameters (vtt.models.size:
the LoRA matrices and the full copies of lora_modules_to_save): a checkpoint holds adapter_model.safetensors
(T x the weight bytes), the optimizer states of T (12 or 8 bytes each), and under ZeRO-1/2 DeepSpeed's
module states of T again; the final model is adapter_model.safetensors alone, not the base's weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from vtt import collective
from vtt.exits import Exit
from vtt.files import checkpoints, complete_checkpoints, size
from vtt.models.size import parameter_counts

GB = 1e9
# Room kept beyond a measured checkpoint: trainer_state.json, logs and rounding of file system blocks.
SLACK = 0.05


@dataclass
class Need:
    """Bytes a run will add under `path`, and what they are, for the message."""

    path: Path
    bytes: int
    what: str


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
# Beside the weights a checkpoint holds the tokenizer/processor files, configs, RNG states and
# DeepSpeed's zero_to_fp32.py (~64 kB). A hub model's tokenizer is not known before download: 20 MB
# covers the large ones (NLLB's tokenizer.json is ~17 MB).
SCRIPTS_AND_STATES = 64_000
HUB_SMALL_FILES = 20_000_000


def small_files(model_name_or_path: str) -> int:
    """Bytes of everything but the weights in a model folder (tokenizer, processor, configs)."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        return HUB_SMALL_FILES
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.suffix not in WEIGHT_SUFFIXES)


def checkpoint_bytes(
    params: int, training, extra: int = 0, adapter: int | None = None, loaded: int = 4
) -> tuple[int, int, str]:
    """(checkpoint, final model, breakdown) in bytes for `params` parameters under these arguments.

    `extra`: the model's small files (small_files()), saved with every checkpoint and the final model.
    `adapter`: the trainable parameters of an adapter run (use_peft): only they are saved, in the checkpoints
    and in the final model (adapter_model.safetensors).
    `loaded`: bytes a weight takes as the model loads (loaded_bytes()), what a run without DeepSpeed keeps.
    """
    deepspeed = training.deepspeed
    half = training.bf16 or training.fp16
    saved = params if adapter is None else adapter
    # DeepSpeed casts the whole module to bf16/fp16, the adapter too; without it peft keeps the adapter in fp32
    # (get_peft_model's autocast_adapter_dtype), and the Trainer a full model as loaded.
    plain = 4 if adapter is not None else loaded
    weights = saved * ((2 if half else 4) if deepspeed else plain)
    stage = 0
    if deepspeed:
        config = training.hf_deepspeed_config.config if getattr(training, "hf_deepspeed_config", None) else {}
        stage = config.get("zero_optimization", {}).get("stage", 0)
    what = "weights" if adapter is None else "adapter weights (adapter_model.safetensors)"
    parts = [f"{size(weights)} {what}"]
    total = weights
    if not training.save_only_model:
        per_param = 12 if deepspeed else 2 * plain  # fp32 master + moments, or torch AdamW's moments as the weights
        optimizer = saved * per_param
        total += optimizer
        parts.append(f"{size(optimizer)} optimizer states ({per_param} bytes/param)")
        if deepspeed and stage < 3:
            # mp_rank_00_model_states.pt holds the engine's module_state_dict. For a PeftModel the Trainer asks for
            # the trained parameters only: transformers 5.24.0 trainer.py:3558-3559 (_save_optimizer_and_scheduler)
            # calls save_checkpoint(output_dir, exclude_frozen_parameters=True), and deepspeed 0.19.8
            # engine.py:4012-4015 (module_state_dict) deletes every parameter with requires_grad False (and
            # engine.py:5383 saves no frozen fragments then). Without an adapter it holds every parameter.
            # Under ZeRO-3 it holds placeholders only.
            total += weights
            parts.append(f"{size(weights)} DeepSpeed module states")
    total += extra + SCRIPTS_AND_STATES
    parts.append(f"{size(extra + SCRIPTS_AND_STATES)} tokenizer, configs, states")
    return total, weights + extra, " + ".join(parts)


def _saves(training) -> int | None:
    """How many checkpoints the run writes, when the arguments tell (max_steps with a steps strategy)."""
    strategy = str(getattr(training.save_strategy, "value", training.save_strategy))
    if strategy == "no":
        return 0
    if strategy == "steps" and training.max_steps and training.max_steps > 0:
        steps = (
            training.save_steps if training.save_steps >= 1 else max(1, int(training.save_steps * training.max_steps))
        )
        return max(1, int(training.max_steps // steps))
    return None


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def model_bytes(run, training, trainer: str, task=None) -> tuple[int, int, int, str]:
    """(parameters of the base model, checkpoint, final model, breakdown) for the run; with task.use_peft an
    adapter run's (the Trainer saves a PeftModel with PeftModel.save_pretrained: adapter_model.safetensors
    holding the adapter and the lora_modules_to_save copies, transformers 5.24.0 trainer.py:4166)."""
    counts = parameter_counts(run.model_name_or_path, trainer, task)
    params = counts.total if counts.adapter is None else counts.total - counts.trained  # the base's own
    adapter = counts.trained if counts.adapter is not None else None
    extra, loaded = small_files(run.model_name_or_path), loaded_bytes(run.model_name_or_path)
    checkpoint, final, breakdown = checkpoint_bytes(params, training, extra, adapter, loaded)
    return params, checkpoint, final, breakdown


def loaded_bytes(model_name_or_path: str) -> int:
    """Bytes a weight of the model takes as from_pretrained loads it (its config's dtype; 4 where unknown)."""
    from transformers import AutoConfig

    from vtt.check.memory import load_dtype

    try:
        return load_dtype(AutoConfig.from_pretrained(model_name_or_path, local_files_only=True)).itemsize
    except (OSError, ValueError):  # not a folder nor in the cache: parameter_counts said so already
        return 4


def estimate(run, training, trainer: str, task=None) -> list[Need]:
    """What the run will write: checkpoints + final model in output_dir, model download, dataset cache.

    task: the trainer's arguments; with use_peft the checkpoints and final model are the adapter's."""
    from huggingface_hub import constants, try_to_load_from_cache

    params, checkpoint, final, breakdown = model_bytes(run, training, trainer, task)
    output_dir = Path(training.output_dir)
    saves, limit = _saves(training), training.save_total_limit
    if saves == 0:
        kept, peak = 0, final
        how = f"final model {size(final)} (save_strategy no)"
    elif limit and (saves is None or saves > limit):
        # The Trainer writes the newest checkpoint before it deletes the oldest: limit + 1 exist at once.
        kept, peak = limit, (limit + 1) * checkpoint
        how = f"{limit + 1} checkpoints x {size(checkpoint)} ({breakdown}): save_total_limit={limit} + the newest"
        if limit > 1:
            how += f"; save_total_limit=1 would need {size(2 * checkpoint)}"
    else:
        kept = saves if saves is not None else 1
        peak = kept * checkpoint + final
        unknown = "" if saves is not None else ", save_total_limit unset: only the first checkpoint counted"
        how = f"{kept} checkpoint(s) x {size(checkpoint)} ({breakdown}) + final model {size(final)}{unknown}"
    existing = sum(_folder_size(p) for p in checkpoints(output_dir)[-kept:]) if kept else 0
    needs = [Need(output_dir, max(peak - existing, 0), how)]
    model = run.model_name_or_path
    if not Path(model).exists():  # a hub id: weights go to the HF cache unless they are there already
        cached = any(
            isinstance(try_to_load_from_cache(model, name), str)
            for name in ("model.safetensors", "model.safetensors.index.json")
        )
        if not cached:
            download = params * 2  # hub checkpoints of this size are shipped in 16-bit
            needs.append(Need(Path(constants.HF_HUB_CACHE), download, f"download of {model} ({size(download)})"))
    for data in (run.dataset, run.eval_dataset):
        if data and Path(data).is_dir():  # datasets' .map() writes its processed copy beside a prepared folder
            copy = _folder_size(Path(data))
            needs.append(Need(Path(data), copy, f"processed copy of {data} ({size(copy)})"))
    return needs


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_fits(needs: list[Need]) -> None:
    """A ValueError with the numbers and what to change when the needs of one file system exceed its free space."""
    by_device: dict[int, list[Need]] = {}
    for need in needs:
        by_device.setdefault(os.stat(_existing(need.path)).st_dev, []).append(need)
    problems = []
    for group in by_device.values():
        free = shutil.disk_usage(_existing(group[0].path)).free
        total = sum(n.bytes for n in group)
        if total > free:
            items = "; ".join(f"{n.path}: {n.what}" for n in group)
            problems.append(f"needs {size(total)}, {size(free)} free on the file system of {group[0].path} ({items})")
    if problems:
        raise ValueError(
            "not enough disk space for this run: "
            + " | ".join(problems)
            + ". Fix: lower save_total_limit, set save_only_model: true (checkpoints without optimizer states: "
            "no resuming), or set output_dir (or HF_HOME) to a file system with more space"
        )


def check_space(run, training, trainer: str, task=None) -> None:
    """At a trainer's start: every rank checks the file systems it sees; all exit 28 if one cannot fit."""
    needs = collective.from_rank0(lambda: estimate(run, training, trainer, task))
    try:
        check_fits(needs)
        problem = None
    except ValueError as err:
        problem = str(err)
    problems = [p for p in collective.gather(problem) if p]
    if problems:
        if collective.is_rank0():
            print(f"vtt disk: {problems[0]} (nothing was trained)", flush=True)
        raise SystemExit(Exit.DISK_FULL)


class SaveGuard(TrainerCallback):
    """Before each save, checks that the checkpoint (and, at the last step, the final model) fits.

    When it would not, the save is skipped on every rank (a half-written checkpoint is worse than none:
    resuming would pick it), training stops, and exit() ends the job with Exit.DISK_FULL. The size is
    the newest complete checkpoint's, measured, or `first_checkpoint_bytes` before there is one.
    """

    def __init__(self, first_checkpoint_bytes: int = 0, final_model_bytes: int = 0, keep: int | None = None):
        self.keep = keep  # save_total_limit: vtt.train.checkpoints applies it, the Trainer's own is off
        self.first_checkpoint_bytes = first_checkpoint_bytes
        self.final_model_bytes = final_model_bytes
        self.message: str | None = None

    def _need(self, output_dir: Path, saving: bool, last_step: bool, limit: int | None) -> int:
        done = complete_checkpoints(output_dir)
        checkpoint = _folder_size(done[-1]) if done else self.first_checkpoint_bytes
        final = 0
        if last_step:
            final = self.final_model_bytes
            if done:
                final = sum(f.stat().st_size for f in done[-1].glob("*.safetensors")) or final
            if saving and limit and len(done) + 1 > limit:
                # The final model is written after the checkpoints beyond the limit are deleted.
                final = max(0, final - sum(_folder_size(p) for p in done[: len(done) + 1 - limit]))
        return int(((checkpoint if saving else 0) + final) * (1 + SLACK))

    def _check(self, args, state, control, **kwargs):
        last_step = state.max_steps > 0 and state.global_step >= state.max_steps
        if not (control.should_save or last_step) or self.message:
            return control
        output_dir = Path(args.output_dir)
        need = self._need(output_dir, control.should_save, last_step, self.keep)
        free = shutil.disk_usage(_existing(output_dir)).free
        problem = None
        if need > free:
            done = [p.name for p in checkpoints(output_dir)]
            what = "checkpoint" if control.should_save else "final model"
            problem = (
                f"stopped at step {state.global_step}: the next {what} needs {size(need)}, "
                f"{size(free)} free on the file system of {output_dir}. The last complete checkpoint "
                f"is kept: {done[-1] if done else 'none'} (resume from it). Free space, lower save_total_limit "
                f"or move output_dir, then rerun."
            )
        problems = [p for p in collective.gather(problem) if p]
        if problems:
            self.message = problems[0]
            control.should_save = False
            control.should_training_stop = True
        return control

    on_step_end = _check
    on_epoch_end = _check

    def exit_if_stopped(self) -> None:
        """After trainer.train(): when a save was refused, print why (rank 0) and exit 28 on every rank."""
        if self.message:
            if collective.is_rank0():
                print(f"vtt disk: {self.message} Exit code {Exit.DISK_FULL:d}: do not requeue.", flush=True)
            raise SystemExit(Exit.DISK_FULL)


def guard_for(run, training, trainer: str, task=None) -> SaveGuard:
    """A SaveGuard sized from the estimate (used until the first checkpoint can be measured)."""
    _, checkpoint, final, _ = collective.from_rank0(lambda: model_bytes(run, training, trainer, task))
    return SaveGuard(checkpoint, final, training.save_total_limit)


def summary(needs: list[Need]) -> str:
    return json.dumps([{"path": str(n.path), "bytes": n.bytes, "what": n.what} for n in needs], indent=2)
