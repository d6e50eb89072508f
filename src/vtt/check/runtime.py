"""The runtime's own config logic replayed for `vtt check`: what transformers, accelerate and DeepSpeed
would accept or refuse, for a world size given instead of read from torch.distributed.

vtt.check.deepspeed lists the steps in the order the runtime takes them; they are replayed here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from vtt.check.rules import Problem, deepspeed_config_problems, engine_problems, get, show, step_dependent
from vtt.config import RunCommand
from vtt.models._compat import hf_deepspeed_config_set_aside

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


def training_arguments(command: RunCommand, world: int) -> tuple[Any, Any, Any, str | None, list[Problem]]:
    """(run arguments or None, task arguments or None, training arguments, the DeepSpeed file the run
    config names, problems).

    Parsed with use_cpu so that bf16 parses on a login node; the DeepSpeed file is kept away from
    TrainingArguments here (it would start torch.distributed) and given the world size explicitly later.
    """
    from vtt.config import BatchLayoutError, arguments_parser, parse_run_config
    from vtt.values import range_problems

    problems: list[Problem] = []
    config, overrides = command.config, list(command.overrides)
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

    named = command.file_values.get("deepspeed")
    without_deepspeed = dataclasses.replace(command, overrides=(*command.overrides, "--deepspeed", ""))
    try:
        run, task, training = parse_run_config(without_deepspeed, world=world, use_cpu=True)
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


class AtWorld:
    """TrainingArguments as a launcher of `world` processes would see them (args.world_size is read
    from torch.distributed, which is not started here); every other attribute is the real one."""

    def __init__(self, args: Any, world: int):
        self._args = args
        self.world_size = world

    def __getattr__(self, name: str) -> Any:
        return getattr(self._args, name)


def recorder_class() -> type:
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


def leaves(config: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def expected_text(key: str, hf_val: Any, args: Any, world: int) -> str:
    if key == "train_batch_size":
        return (
            f"per_device_train_batch_size {args.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{args.gradient_accumulation_steps} x {world} GPU(s) = {hf_val}"
        )
    if key in ("fp16.enabled", "bf16.enabled"):
        name = key.split(".")[0]
        return f"the training arguments have {name}={str(bool(hf_val)).lower()}"
    return f"the training arguments give {TRAINER_OWNED.get(key, key)}={show(hf_val)}"


def runtime_problems(
    written: dict, args: Any, world: int, model_config: Any, steps_known: bool, on_gpu: bool = True
) -> tuple[list[Problem], list[Problem], dict]:
    """(errors, warnings, the filled config), stage by stage as transformers, accelerate and DeepSpeed run."""
    from accelerate.utils import DeepSpeedPlugin

    errors: list[Problem] = []
    warnings: list[Problem] = []
    at_world = AtWorld(args, world)
    with hf_deepspeed_config_set_aside():  # HfDeepSpeedConfig registers itself globally: leave no trace
        recorder = recorder_class()(copy.deepcopy(written))
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
            problem.detail = expected_text(key, hf_val, args, world)
            if key in STEP_KEYS and not steps_known and step_dependent(key, ds_val, args):
                problem.detail = "the runtime compares it with the optimizer steps, known only once the data is loaded"
                problem.fix = 'set it to "auto" (or give max_steps)'
                warnings.append(problem)
            else:
                errors.append(problem)
        config = recorder.config
    if any(p.source == "transformers" for p in errors):
        return errors, warnings, config  # the runtime stops here

    # accelerate's _prepare_deepspeed: fills a few more, and raises on any "auto" it cannot fill.
    for key, value in leaves(config):
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
        warnings += derivation_warnings(written, ds, args, config)
    return errors, warnings, config


def derivation_warnings(written: dict, ds: Any, args: Any, filled: dict) -> list[Problem]:
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


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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
