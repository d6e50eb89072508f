"""Pre-flight check of a DeepSpeed file against the training arguments and the GPUs a job gets (`vtt check`).

    vtt check --deepspeed deepspeed/zero2.json --gpus 4 [--nodes 2] [--config jobs/llava.yaml] [--json]
              [--fix OUT] [--gpu-memory 80] [--per_device_train_batch_size 2 ...]

The verdict comes from the code the runtime runs, in the order it runs it, with the world size given
instead of read from torch.distributed (a login node has none):

1. TrainingArguments: transformers' `HfTrainerDeepSpeedConfig.trainer_config_process` fills every
   `"auto"` and compares every hard-coded value the Trainer owns; accelerate's `DeepSpeedPlugin` takes
   the file as TrainingArguments hands it over; on GPUs the Trainer's AcceleratorState adds the bf16/fp16
   block the arguments ask for where the file has none.
2. `Trainer.train()` -> `trainer_config_finalize`: raises the mismatches of step 1 (the ValueError that
   ends a job after its queue wait and model load).
3. accelerate's `_prepare_deepspeed`: an `"auto"` that nothing fills is an error.
4. `deepspeed.initialize` -> DeepSpeed's `DeepSpeedConfig`: batch arithmetic (its own derivation where
   the file gives only some of the three batch keys), every key its blocks refuse, bf16 and fp16 not
   both on; then what the engine refuses as it builds (vtt.dsrules: optimizer and scheduler types,
   warmup_num_steps, tensor_parallel.autotp_size).

Around that: `global_batch_size` of the run config must divide for the world size, and an estimate
of model-state memory per GPU (DeepSpeed's own accounting in its estimate_zero2/zero3 functions, with
frozen parameters and ZeRO's gradient buckets counted) is set against the GPU's memory when one is
given. `--fix OUT` writes a copy of the file with every value the Trainer owns set to "auto".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vtt.dsrules import BATCH_KEYS, Problem, deepspeed_config_problems, engine_problems, get, show, step_dependent
from vtt.modelsize import count_parameters
from vtt.paths import shipped

# The DeepSpeed keys transformers' trainer_config_process/finalize compare with TrainingArguments
# (fill_match), with the training argument each one mirrors: `--fix` sets exactly these to "auto".
TRAINER_OWNED = {
    "train_micro_batch_size_per_gpu": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "train_batch_size": "per_device_train_batch_size x gradient_accumulation_steps x world size",
    "gradient_clipping": "max_grad_norm",
    "optimizer.params.lr": "learning_rate",
    "optimizer.params.betas": "[adam_beta1, adam_beta2]",
    "optimizer.params.eps": "adam_epsilon",
    "optimizer.params.weight_decay": "weight_decay",
    "scheduler.params.warmup_max_lr": "learning_rate",
    "scheduler.params.warmup_num_steps": "warmup_steps",
    "scheduler.params.total_num_steps": "max_steps (or the steps the data gives)",
    "fp16.enabled": "fp16",
    "bf16.enabled": "bf16",
}
# Filled by accelerate's _prepare_deepspeed beyond what transformers fills: any other "auto" left is an error there.
ACCELERATE_FILLS = {"zero_optimization.stage3_gather_16bit_weights_on_model_save": False}
# Keys whose runtime value depends on the number of optimizer steps, known only once the data is loaded
# unless max_steps is given.
STEP_KEYS = ("scheduler.params.total_num_steps", "scheduler.params.warmup_num_steps")
MEMORY_MARGIN = 0.10  # model states within 10% of the GPU's memory leave no room for activations: warn


@dataclass
class MemoryEstimate:
    """Model-state memory per GPU (params, grads, optimizer states), in GB (1e9 bytes)."""

    model: str
    params: int | None = None
    trained: int | None = None  # fewer than params when part of the model is frozen
    largest_layer: int | None = None  # parameters of the biggest single module (ZeRO-3 gathers it whole)
    stage: int = 0
    world: int = 1
    offload_optimizer: str = "none"
    offload_param: str = "none"
    params_gb: float = 0.0
    grads_gb: float = 0.0
    optimizer_gb: float = 0.0
    buffers_gb: float = 0.0  # ZeRO's working buffers: gradient buckets (stage 1-2), the largest layer gathered (3)
    gpu_memory_gb: float | None = None
    skipped: str | None = None  # why there is no estimate

    @property
    def total_gb(self) -> float:
        return self.params_gb + self.grads_gb + self.optimizer_gb + self.buffers_gb

    def line(self) -> str:
        if self.skipped:
            return f"memory: skipped ({self.skipped})"
        offload = ", ".join(
            f"{what} offloaded to {dev}"
            for what, dev in (("optimizer", self.offload_optimizer), ("params", self.offload_param))
            if dev != "none"
        )
        against = f" of {self.gpu_memory_gb:g} GB" if self.gpu_memory_gb else " (no GPU memory given: --gpu-memory)"
        frozen = (
            f" ({self.trained / 1e9:.2f}B trained)" if self.trained is not None and self.trained < self.params else ""
        )
        return (
            f"memory: {self.model}: {self.params / 1e9:.2f}B params{frozen}, ZeRO-{self.stage} on {self.world} GPU(s)"
            f"{', ' + offload if offload else ''}: model states {self.total_gb:.1f} GB per GPU{against} "
            f"(params {self.params_gb:.1f} + grads {self.grads_gb:.1f} + optimizer {self.optimizer_gb:.1f}"
            f" + buffers {self.buffers_gb:.1f})"
        )


@dataclass
class CheckReport:
    deepspeed: str
    world: int
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    config: dict[str, Any] | None = None  # the DeepSpeed config as the runtime would fill it

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        out = [p.line("error", self.deepspeed) for p in self.errors]
        out += [p.line("warning", self.deepspeed) for p in self.warnings]
        if self.memory is not None:
            out.append(self.memory.line())
        verdict = "consistent" if self.ok else f"{len(self.errors)} problem(s)"
        out.append(f"{self.deepspeed} on {self.world} GPU(s): {verdict}")
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        if self.memory is not None:
            data["memory"]["total_gb"] = self.memory.total_gb
        data.pop("config")
        return json.loads(json.dumps(data, default=str))


# ---------------------------------------------------------------------------------------------- inputs


def read_deepspeed(path: str | Path) -> dict[str, Any]:
    """The DeepSpeed file as a dict (JSON, as accelerate reads it), or a ValueError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such DeepSpeed file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object of DeepSpeed settings, found {type(data).__name__}")
    return data


def _pop_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """argv without `name VALUE`, and that value."""
    if name not in argv:
        return argv, None
    at = argv.index(name)
    if at + 1 >= len(argv):
        raise ValueError(f"{name} needs a value")
    return argv[:at] + argv[at + 2 :], argv[at + 1]


def _training_arguments(
    config: str | Path | None, world: int, overrides: list[str]
) -> tuple[Any, Any, Any, str | None, list[Problem]]:
    """(run arguments or None, task arguments or None, training arguments, the DeepSpeed file the run
    config names, problems).

    Parsed with use_cpu so that bf16 parses on a login node; the DeepSpeed file is kept away from
    TrainingArguments here (it would start torch.distributed) and given the world size explicitly later.
    """
    from vtt.config import BatchLayoutError, arguments_parser, parse_run_config, range_problems, read_yaml

    problems: list[Problem] = []
    if config is None:
        from transformers import TrainingArguments

        try:
            (training,) = arguments_parser(TrainingArguments).parse_args_and_config(
                [*overrides, "--deepspeed", "", "--use_cpu", "true", "--report_to", "none"]
            )
        except ValueError as err:
            raise ValueError(f"bad training argument in {' '.join(overrides)}: {err}") from None
        bad = range_problems((training,), overrides)
        if bad:
            raise ValueError("bad training argument: " + "; ".join(bad))
        return None, None, training, None, problems

    argv = ["--config", str(config), *overrides]
    named = read_yaml(config).get("deepspeed")
    argv += ["--deepspeed", ""]
    try:
        run, task, training = parse_run_config(argv, world=world, use_cpu=True)
    except BatchLayoutError as err:
        # global_batch_size that does not divide for this world size is a finding, not a bad input:
        # report it and check the rest with the accumulation the config gives.
        run, task, training = err.arguments
        problems.append(
            Problem(
                key="global_batch_size",
                value=run.global_batch_size,
                expected=None,
                fix=str(err).split(". ", 1)[1] if ". " in str(err) else str(err),
                source="vtt",
                detail=f"it is not a multiple of per_device_train_batch_size "
                f"{training.per_device_train_batch_size} x {world} GPU(s)",
                file=str(config),
            )
        )
    return run, task, training, named, problems


class _AtWorld:
    """TrainingArguments as a launcher of `world` processes would see them (args.world_size is read
    from torch.distributed, which is not started here); every other attribute is the real one."""

    def __init__(self, args: Any, world: int):
        self._args = args
        self.world_size = world

    def __getattr__(self, name: str) -> Any:
        return getattr(self._args, name)


def _recorder_class() -> type:
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class Recorder(HfTrainerDeepSpeedConfig):
        """transformers' own fill-and-compare, keeping each mismatch as (key, file value, hf name, hf value)."""

        found: list[tuple[str, Any, str, Any]]

        def fill_match(self, ds_key_long, hf_val, hf_key=None, must_match=True):
            before = len(self.mismatches)
            written = self.get_value(ds_key_long)
            super().fill_match(ds_key_long, hf_val, hf_key, must_match)
            if len(self.mismatches) > before:
                self.found.append((ds_key_long, written, hf_key, hf_val))

    return Recorder


# ---------------------------------------------------------------------------------------------- the check


def _leaves(config: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _expected_text(key: str, hf_val: Any, args: Any, world: int) -> str:
    if key == "train_batch_size":
        return (
            f"per_device_train_batch_size {args.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{args.gradient_accumulation_steps} x {world} GPU(s) = {hf_val}"
        )
    if key in ("fp16.enabled", "bf16.enabled"):
        name = key.split(".")[0]
        return f"the training arguments have {name}={str(bool(hf_val)).lower()}"
    return f"the training arguments give {TRAINER_OWNED.get(key, key)}={show(hf_val)}"


def _runtime_problems(
    written: dict, args: Any, world: int, model_config: Any, steps_known: bool, on_gpu: bool = True
) -> tuple[list[Problem], list[Problem], dict]:
    """(errors, warnings, the filled config), stage by stage as transformers, accelerate and DeepSpeed run."""
    import transformers.integrations.deepspeed as hf_ds
    from accelerate.utils import DeepSpeedPlugin

    errors: list[Problem] = []
    warnings: list[Problem] = []
    at_world = _AtWorld(args, world)
    saved = hf_ds._hf_deepspeed_config_weak_ref  # HfDeepSpeedConfig registers itself globally: leave no trace
    try:
        recorder = _recorder_class()(copy.deepcopy(written))
        recorder.found = []
        recorder.trainer_config_process(at_world)  # TrainingArguments.__post_init__
        try:
            plugin = DeepSpeedPlugin(hf_ds_config=recorder)  # ditto, right after
        except ValueError as err:
            errors.append(
                Problem(
                    "zero_optimization", None, None, 'add a "zero_optimization" block', "training_arguments", str(err)
                )
            )
            return errors, warnings, recorder.config
        if on_gpu:  # Trainer.__init__ -> AcceleratorState (not on CPU): adds the bf16/fp16 block the args ask for
            with contextlib.suppress(ValueError):  # fp16/bf16 hard-coded against the args: a mismatch named below
                plugin.set_mixed_precision(args.mixed_precision)
        # Trainer.train() -> deepspeed_init -> trainer_config_finalize; the model is only asked for its config.
        model = SimpleNamespace(config=model_config or SimpleNamespace(hidden_size=1024))
        steps = args.max_steps if args.max_steps > 0 else 1
        try:
            recorder.trainer_config_finalize(at_world, model, steps)
        except ValueError as err:
            if not recorder.found:  # not a mismatch: e.g. a model config without hidden_size
                errors.append(
                    Problem(
                        "zero_optimization", None, None, "set the bucket sizes to numbers", "transformers", str(err)
                    )
                )
        for key, ds_val, _hf_key, hf_val in recorder.found:
            problem = Problem(key, ds_val, hf_val, f'set it to "auto" (or {show(hf_val)})', "transformers")
            problem.detail = _expected_text(key, hf_val, args, world)
            if key in STEP_KEYS and not steps_known and step_dependent(key, ds_val, args):
                problem.detail = "the runtime compares it with the optimizer steps, known only once the data is loaded"
                problem.fix = 'set it to "auto" (or give max_steps)'
                warnings.append(problem)
            else:
                errors.append(problem)
        config = recorder.config
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved
    if any(p.source == "transformers" for p in errors):
        return errors, warnings, config  # the runtime stops here

    # accelerate's _prepare_deepspeed: fills a few more, and raises on any "auto" it cannot fill.
    for key, value in _leaves(config):
        if value == "auto" and key not in ACCELERATE_FILLS:
            errors.append(
                Problem(
                    key,
                    "auto",
                    None,
                    "set a value: nothing fills this key",
                    "accelerate",
                    "neither the Trainer nor accelerate fills it",
                )
            )
    if errors:
        return errors, warnings, config
    for key, value in ACCELERATE_FILLS.items():
        node = get(config, key.rsplit(".", 1)[0]) if "." in key else config
        if isinstance(node, dict) and node.get(key.rsplit(".", 1)[-1]) == "auto":
            node[key.rsplit(".", 1)[-1]] = value

    # deepspeed.initialize -> DeepSpeedConfig (every key it refuses), then what the engine refuses as it builds
    found, ds = deepspeed_config_problems(written, config, world)
    errors += found + engine_problems(config, world)
    if ds is not None:
        warnings += _derivation_warnings(written, ds, args, config)
    return errors, warnings, config


def _derivation_warnings(written: dict, ds: Any, args: Any, filled: dict) -> list[Problem]:
    """Where DeepSpeed derived a batch key the file left out, and the Trainer runs something else."""
    out = []
    pairs = (
        ("train_micro_batch_size_per_gpu", ds.train_micro_batch_size_per_gpu, args.per_device_train_batch_size),
        ("gradient_accumulation_steps", ds.gradient_accumulation_steps, args.gradient_accumulation_steps),
    )
    for key, derived, trainer in pairs:
        if key not in written and derived != trainer:
            out.append(
                Problem(
                    key,
                    None,
                    trainer,
                    f'add "{key}": "auto"',
                    "deepspeed",
                    f"absent: DeepSpeed derives {derived}, the Trainer runs {trainer}",
                )
            )
    for name in ("bf16", "fp16"):
        if getattr(args, name) and name not in written and get(filled, f"{name}.enabled") is not True:
            out.append(
                Problem(
                    f"{name}.enabled",
                    None,
                    True,
                    f'add "{name}": {{"enabled": "auto"}}',
                    "deepspeed",
                    f"absent although the training arguments have {name}=true: DeepSpeed trains in fp32",
                )
            )
    zero = written.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero.get("stage", 0), int) else 0
    for block, least in (("offload_param", 3), ("offload_optimizer", 1)):
        device = (zero.get(block) or {}).get("device", "none") if isinstance(zero.get(block), dict) else "none"
        if device not in (None, "none") and stage < least:
            out.append(
                Problem(
                    f"zero_optimization.{block}.device",
                    device,
                    None,
                    f"use ZeRO stage {least} or more, or remove {block}",
                    "deepspeed",
                    f"ZeRO stage {stage} ignores it",
                )
            )
    return out


MAX_BUCKET_FLUSHES = 100  # per backward pass; hidden_size² buckets give ~450 on a 0.5B model
DEEPSPEED_BUCKET = 5e8  # DeepSpeed's reduce_bucket_size where the file sets none


def _reduce_bucket(zero: dict) -> float:
    """Elements in one ZeRO-1/2 gradient bucket, as DeepSpeed will allocate it."""
    bucket = zero.get("reduce_bucket_size", DEEPSPEED_BUCKET)
    return bucket if isinstance(bucket, (int, float)) and bucket > 0 else DEEPSPEED_BUCKET


def _bucket_warnings(written: dict, filled: dict, trained: int) -> list[Problem]:
    """ZeRO-1/2 buckets so small that the backward pass stalls on their flushes (bench/RESULTS.md)."""
    zero, filled_zero = written.get("zero_optimization") or {}, filled.get("zero_optimization") or {}
    if filled_zero.get("stage") not in (1, 2):
        return []
    bucket = _reduce_bucket(filled_zero)
    flushes = trained / bucket
    if flushes <= MAX_BUCKET_FLUSHES:
        return []
    written_value = zero.get("reduce_bucket_size", bucket)
    how = f' ("auto" fills it with hidden_size² = {bucket:,.0f})' if written_value == "auto" else ""
    detail = (
        f"{trained:,} trained parameters in buckets of {bucket:,.0f} elements{how} are ~{flushes:,.0f} flushes"
        " in every backward pass, each a round of Python and small copies while the GPU waits"
    )
    fix = "set it to 200000000 (as deepspeed/zero2.json): two such buckets take 0.8 GB"
    return [Problem("zero_optimization.reduce_bucket_size", written_value, None, fix, "vtt", detail)]


# ---------------------------------------------------------------------------------------------- memory


def _model_parameters(
    name: str, trainer: str | None, vision_frozen: bool = False
) -> tuple[tuple[int, int] | None, Any, str | None]:
    """((all, trained) parameters, model config, why not) from the model's config alone: built on the
    meta device, no weights read, no network (a hub id must be in the local cache)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except OSError:  # a hub id that is not in the local cache: the check never downloads
        return None, None, f"no local config for {name}: not a folder, not in the Hugging Face cache"
    except Exception as err:  # e.g. ValueError for a model type this transformers does not know
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, None, f"no usable config for {name}: {first[:160]}"
    return count_parameters(config, trainer, vision_frozen), config, None


def estimate_memory(counts, config: dict, args: Any, world: int) -> MemoryEstimate:
    """Model-state memory per GPU at its peak (the optimizer step), as DeepSpeed's estimators count it
    (`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`), with two things
    they leave out: frozen parameters (their 16-bit weights only: no grads, no optimizer states) and the
    gradient buckets of stages 1-2. Mixed precision with Adam, per trained parameter: 16-bit grads (2,
    stages 0-2), the fp32 grads the step reads (4), fp32 master weights and two moments (12); stage 1
    partitions the optimizer states, 2 the grads too, 3 the weights too. What is offloaded leaves the GPU.

    counts: modelsize.ParameterCount; config: the DeepSpeed config with its "auto" values filled.
    """
    params, trained, largest = counts
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero.get("stage", 0), int) else 0
    off_opt = (zero.get("offload_optimizer") or {}).get("device") or "none"
    off_par = (zero.get("offload_param") or {}).get("device") or "none"
    half = bool(args.bf16 or args.fp16)
    weight = 2 if half else 4
    grad_bytes = (4 if stage >= 3 else 2 + 4) if half else 4
    params_b = weight * params / (world if stage >= 3 else 1)
    grads_b = grad_bytes * trained / (world if stage >= 2 else 1)
    optim_b = (12 if half else 8) * trained / (world if stage >= 1 else 1)
    if stage >= 3:  # each layer's full weights and grads while it runs
        buffers_b = 2 * weight * largest
    elif stage >= 1:  # reduce buckets: two when communication overlaps the backward pass
        # allocated whole, however small the model
        buffers_b = weight * _reduce_bucket(zero) * (2 if zero.get("overlap_comm") else 1)
    else:
        buffers_b = 0.0
    if off_opt != "none" and stage >= 1:  # ZeRO-Offload: the fp32 optimizer step, and the grads it needs, on the CPU
        optim_b = grads_b = 0.0
    if off_par != "none" and stage >= 3:
        params_b = 0.0
    return MemoryEstimate(
        model="",
        params=params,
        trained=trained,
        largest_layer=largest,
        stage=stage,
        world=world,
        offload_optimizer=off_opt,
        offload_param=off_par,
        params_gb=params_b / 1e9,
        grads_gb=grads_b / 1e9,
        optimizer_gb=optim_b / 1e9,
        buffers_gb=buffers_b / 1e9,
    )


def _memory_problems(memory: MemoryEstimate) -> tuple[list[Problem], list[Problem]]:
    if memory.skipped or not memory.gpu_memory_gb:
        return [], []
    total, have = memory.total_gb, memory.gpu_memory_gb
    detail = f"model states alone need {total:.1f} GB per GPU, the GPU has {have:g} GB"
    fix = "use more GPUs, a higher ZeRO stage, or offload (zero_optimization.offload_optimizer / offload_param)"
    problem = Problem("zero_optimization.stage", memory.stage, None, fix, "vtt", detail)
    if total > have:
        return [problem], []
    if total > (1 - MEMORY_MARGIN) * have:
        problem.detail += f": within {MEMORY_MARGIN:.0%}, no room for activations"
        return [], [problem]
    return [], []


# ---------------------------------------------------------------------------------------------- public API


def check_run(
    config: str | Path | None,
    gpus: int,
    nodes: int = 1,
    overrides: Sequence[str] = (),
    deepspeed: str | Path | None = None,
    gpu_memory_gb: float | None = None,
    disk: bool = False,
) -> CheckReport:
    """Check a DeepSpeed file against a run config (or TrainingArguments defaults) on nodes x gpus GPUs.

    Raises ValueError when the check cannot run (missing or invalid file, bad argument); problems
    found are in the report. With `disk`, the run's checkpoints are also measured against the free space
    of its output folder — meaningful only where the job will write (a login node on the shared file
    system); every trainer start checks it again where it runs.
    """
    if gpus < 1 or nodes < 1:
        raise ValueError(f"--gpus {gpus} --nodes {nodes}: both must be at least 1")
    with _quiet():
        return _check(config, gpus * nodes, overrides, deepspeed, gpu_memory_gb, disk)


def _check(config, world: int, overrides: list[str], deepspeed, gpu_memory_gb, disk: bool) -> CheckReport:
    overrides, from_argv = _pop_option(list(overrides), "--deepspeed")
    run, task, args, named, problems = _training_arguments(config, world, overrides)
    chosen = deepspeed or from_argv or named
    if not chosen:
        raise ValueError(
            f"{config}: names no DeepSpeed file: pass --deepspeed FILE" if config else "pass --deepspeed FILE"
        )
    path = shipped(chosen)
    written = read_deepspeed(path)
    report = CheckReport(deepspeed=str(chosen), world=world)
    report.errors += problems + _dataloader_problems(args, config)
    vision_frozen = bool(getattr(task, "freeze_vision_tower", False))
    counts, model_config, why = (
        _model_parameters(run.model_name_or_path, run.trainer, vision_frozen) if run else (None, None, None)
    )
    errors, warnings, filled = _runtime_problems(
        written, args, world, model_config, steps_known=args.max_steps > 0, on_gpu=_on_gpu(config, overrides)
    )
    if problems:  # no accumulation exists for this layout: batch findings would only repeat that
        errors = [p for p in errors if p.key not in BATCH_KEYS]
    report.errors += errors
    report.warnings += warnings
    report.config = filled
    if run is None:
        report.memory = MemoryEstimate(model="", skipped="no run config (--config): no model to size")
    elif counts is None:
        report.memory = MemoryEstimate(model=run.model_name_or_path, skipped=why)
    else:
        report.memory = estimate_memory(counts, filled or written, args, world)
        report.warnings += _bucket_warnings(written, filled or written, counts.trained)
        report.memory.model = run.model_name_or_path
        report.memory.gpu_memory_gb = gpu_memory_gb
    mem_errors, mem_warnings = _memory_problems(report.memory)
    report.errors += mem_errors
    report.warnings += mem_warnings
    if disk and run is not None and counts is not None:
        report.errors += _disk_problems(run, args, str(config))
    return report


def _on_gpu(config: str | Path | None, overrides: list[str]) -> bool:
    """Whether the job runs on GPUs: yes unless use_cpu is given true (the check itself parses with use_cpu,
    so that bf16 parses on a login node)."""
    from vtt.config import read_yaml

    _, given = _pop_option(list(overrides), "--use_cpu")
    if given is None and config is not None:
        given = read_yaml(config).get("use_cpu")
    return str(given).lower() not in ("true", "1", "yes")


def _dataloader_problems(args: Any, config: str | Path | None) -> list[Problem]:
    """The DataLoader settings as torch's DataLoader checks them when the Trainer builds it, at the first
    step (after the queue wait and the model load): it refuses them the same way here, without workers."""
    from torch.utils.data import DataLoader

    try:
        with warnings.catch_warnings():  # its worker-count advice is about this machine, not the compute node
            warnings.simplefilter("ignore")
            DataLoader(
                [],
                num_workers=args.dataloader_num_workers,
                persistent_workers=args.dataloader_persistent_workers,
                prefetch_factor=args.dataloader_prefetch_factor,
            )
    except ValueError as err:
        fix = "set dataloader_num_workers above 0, or dataloader_persistent_workers false"
        fix += " and dataloader_prefetch_factor null"
        detail = f"torch's DataLoader refuses it: {err}"
        return [
            Problem("dataloader_num_workers", args.dataloader_num_workers, None, fix, "vtt", detail, str(config or ""))
        ]
    return []


def _disk_problems(run, args, config: str) -> list[Problem]:
    """The run's checkpoints and final model against the free space where they will be written."""
    from vtt import disk

    try:
        disk.check_fits(disk.estimate(run, args, run.trainer))
    except ValueError as err:
        detail, _, fix = str(err).partition(". Fix: ")
        return [Problem("output_dir", args.output_dir, None, fix, "vtt", detail=detail, file=config)]
    return []


def fix_deepspeed(source: str | Path, out: str | Path) -> list[str]:
    """Write a copy of `source` with every value the Trainer owns set to "auto" (the batch keys and
    precision blocks added where absent); `source` is never touched and `out` appears whole or not at
    all. Returns the keys changed."""
    source, out = Path(source), Path(out)
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"--fix {out}: that is the file being checked; write the corrected copy elsewhere")
    config = read_deepspeed(source)
    changed = []
    for key in TRAINER_OWNED:
        parent, _, leaf = key.rpartition(".")
        node = get(config, parent) if parent else config
        if key in BATCH_KEYS and leaf not in config:
            config[leaf] = "auto"
            changed.append(key)
        elif isinstance(node, dict) and leaf in node and node[leaf] != "auto":
            node[leaf] = "auto"
            changed.append(key)
    for name in ("bf16", "fp16"):
        if not isinstance(config.get(name), dict):
            config[name] = {"enabled": "auto"}
            changed.append(f"{name}.enabled")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as sink:
            json.dump(config, sink, indent=2)
            sink.write("\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return changed


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DeepSpeed and transformers log at import and config time; a check prints only its findings.

    Their loggers are quietened after both are imported: DeepSpeed's import sets its logger to WARNING, so a
    level set before it was undone and DeepSpeedConfig's warnings reached the report. The levels are put
    back afterwards. DS_ACCELERATOR=cpu (no accelerator probe, no "Setting accelerator" warning) holds only
    while the check runs: left in the environment, `vtt run`'s trainers inherited it and DeepSpeed put
    ZeRO-3's parameters on the CPU beside NCCL ("No backend type associated with device type cpu").
    """
    saved = os.environ.get("DS_ACCELERATOR")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.utils.logging  # noqa: F401  (creates DeepSpeed's logger, at its own level)
    import transformers.utils.logging  # noqa: F401  (likewise transformers')

    names = ("DeepSpeed", "deepspeed", "transformers", "accelerate")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if saved is None:
            os.environ.pop("DS_ACCELERATOR", None)


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deepspeed", help="DeepSpeed JSON file (default: the one the run config names)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs per node")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (world size = nodes x gpus)")
    parser.add_argument("--config", help="run config, e.g. jobs/llava.yaml (default: TrainingArguments defaults)")
    parser.add_argument(
        "--gpu-memory", type=float, dest="gpu_memory", help="GB of memory per GPU, for the memory check"
    )
    parser.add_argument(
        "--disk", action="store_true", help="also check the free space where output_dir will be written (run it there)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--fix", type=Path, help='write a copy with every Trainer-owned value "auto" here')
    parser.epilog = "Other --name value pairs are training arguments (--per_device_train_batch_size 2 --bf16 true)."


def run(args: argparse.Namespace, extra: list[str]) -> int:
    config = shipped(args.config) if args.config else None
    report = check_run(config, args.gpus, args.nodes, extra, args.deepspeed, args.gpu_memory, disk=args.disk)
    if args.fix:
        changed = fix_deepspeed(shipped(report.deepspeed), args.fix)
        note = f"wrote {args.fix}: " + (", ".join(changed) + ' set to "auto"' if changed else "nothing to change")
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
