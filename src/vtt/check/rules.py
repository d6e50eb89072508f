"""What DeepSpeed itself refuses in a config, for `vtt check` (vtt.check.deepspeed runs the stages in order).

    problems, ds = deepspeed_config_problems(filled_config, world=8)   # DeepSpeedConfig's verdict, every key
    problems += engine_problems(filled_config, world=8)                # what deepspeed.initialize refuses later

DeepSpeedConfig validates its blocks one after another and raises at the first bad one, with pydantic's
location inside that block (`disable` for `compile.disable`). Here each refusal is named by its dotted key
in the file, the key is set aside and DeepSpeedConfig asked again, until it accepts the rest: one check
lists every key to change. The engine's own refusals (an optimizer or scheduler it does not know, tensor
parallelism wider than the job) come from deepspeed.initialize, after the queue wait and the model load.
Written against DeepSpeed 0.19.8.
"""

from __future__ import annotations

import copy
import difflib
import json
import typing
from dataclasses import dataclass
from typing import Any

BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
# pydantic model (its title in a ValidationError) -> the block of the file it validates, where the model's
# name alone does not find it ("loss_scale" is a key of both fp16 and bf16).
MODEL_BLOCKS = {
    "DeepSpeedZeroConfig": "zero_optimization",
    "DeepSpeedBF16Config": "bf16",
    "DeepSpeedFP16Config": "fp16",
    "CompileConfig": "compile",
    "TPTrainingConfig": "tensor_parallel",
    "CommsLoggerConfig": "comms_logger",
}
MAX_LISTED = 20  # a block's keys are listed beside an unknown one up to this many (ZeRO has 40+)
MAX_ROUNDS = 32  # DeepSpeedConfig asked again at most this often (each round sets aside one block's keys)
# Optimizers DeepSpeed dropped (0.19.8 has no 1-bit communication): the engine falls through to
# getattr(torch.optim, name) and stops with an AttributeError at deepspeed.initialize.
DROPPED_OPTIMIZERS = ("onebitadam", "onebitlamb", "zerooneadam")


@dataclass
class Problem:
    """One finding: the key as written in the file (or the run-config field), both values, and the fix."""

    key: str
    value: Any  # what the DeepSpeed file (or run config) says
    expected: Any  # what the training arguments and world size make of it
    fix: str
    # Which step raises it, in the runtime's order: vtt (run config), training_arguments (accelerate's
    # DeepSpeedPlugin), transformers (trainer_config_finalize), accelerate (_prepare_deepspeed), deepspeed.
    source: str
    detail: str = ""
    file: str = ""  # where the key is written, when not the DeepSpeed file (the run config's global_batch_size)

    def line(self, level: str, deepspeed: str) -> str:
        said = f"{self.key}={show(self.value)}" if self.value is not None else self.key
        versus = f" but {self.detail}" if self.detail else ""
        return f"{level}: {self.file or deepspeed}: {said}{versus}; fix: {self.fix}"


def show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list, bool, dict)) or value is None else f"{value:g}"


def get(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


_MISSING = object()


def _at(config: dict, path: tuple) -> Any:
    node: Any = config
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------- DeepSpeedConfig


def _config_class() -> type:
    from deepspeed.runtime.config import DeepSpeedConfig

    class AtWorld(DeepSpeedConfig):
        """DeepSpeed's config class with the data-parallel world size given, not read from torch.distributed."""

        def __init__(self, config: dict, world: int):
            self._world = world
            super().__init__(config)

        @property
        def world_size(self) -> int:
            return self._world

        @world_size.setter
        def world_size(self, _ignored: int) -> None:  # DeepSpeed's __init__ assigns 1 when no process group runs
            pass

    return AtWorld


def _model(title: str) -> type | None:
    """DeepSpeed's pydantic config model of that name."""
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    todo = [DeepSpeedConfigModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == title:
            return cls
        todo += cls.__subclasses__()
    return None


def _known_keys(title: str, inner: tuple) -> list[str]:
    """The keys DeepSpeed's model `title` takes at `inner` (a path inside it), as a file writes them."""
    from pydantic import BaseModel

    model = _model(title)
    for part in inner:
        field = model.model_fields.get(part) if model else None
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None) if model else None
        if field is None:
            return []
        kinds = [field.annotation, *typing.get_args(field.annotation)]
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    if model is None:
        return []
    return sorted({field.alias or name for name, field in model.model_fields.items()})


def _locate(config: dict, title: str, loc: tuple, value: Any) -> tuple:
    """The path in the file of pydantic's `loc` (relative to the block the model `title` validates)."""
    block = MODEL_BLOCKS.get(title)
    if block is not None and _at(config, (block, *loc)) is not _MISSING:
        return (block, *loc)
    blocks = [()] + [(key,) for key, node in config.items() if isinstance(node, dict)]
    for prefix in blocks:  # the monitor model reads top-level keys (tensorboard, wandb): no block of its own
        if loc and _at(config, (*prefix, *loc)) == value:
            return (*prefix, *loc)
    return ((block,) if block else ()) + loc


def _pydantic_problems(err: Exception, config: dict) -> list[tuple[tuple, Problem]]:
    """(path in the file, problem) for every error of one pydantic ValidationError."""
    from deepspeed import __version__

    title = getattr(err, "title", "")
    out = []
    for item in err.errors():
        loc = tuple(str(part) for part in item.get("loc", ()))
        path = _locate(config, title, loc, item.get("input"))
        key = ".".join(path) or "zero_optimization"
        if item.get("type") == "extra_forbidden":
            known = _known_keys(title, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            listed = f" (it takes {', '.join(known)})" if 0 < len(known) <= MAX_LISTED else ""
            hint = f" (did you mean '{close[0]}'?)" if close else listed
            where = ".".join(path[:-1]) or "the top level"
            problem = Problem(
                key,
                item.get("input"),
                None,
                f"remove it{hint}",
                "deepspeed",
                f"DeepSpeed {__version__} has no such key in {where}",
            )
        else:
            problem = Problem(
                key, item.get("input"), None, "use a value DeepSpeed accepts", "deepspeed", item.get("msg", str(err))
            )
        out.append((path, problem))
    return out


def _other_problem(err: Exception, written: dict, config: dict, world: int) -> Problem:
    """An assertion or ValueError of DeepSpeedConfig, in its own words, with the key it is about."""
    text = " ".join(str(err).split())
    if "batch" in text or "gradient_accumulation_steps" in text or "Gradient accumulation" in text:
        missing = [k for k in BATCH_KEYS if k not in written]
        fix = "add " + ", ".join(f'"{k}": "auto"' for k in missing) if missing else 'set the three batch keys to "auto"'
        return Problem(
            "train_batch_size",
            config.get("train_batch_size"),
            None,
            fix,
            "deepspeed",
            f"DeepSpeed on {world} GPU(s): {text}",
        )
    if "bfloat16 and fp16" in text:
        return Problem(
            "bf16.enabled",
            True,
            None,
            'set "fp16": {"enabled": "auto"} and "bf16": {"enabled": "auto"}',
            "deepspeed",
            "fp16.enabled is true too: DeepSpeed refuses both",
        )
    return Problem("zero_optimization", None, None, "correct the setting DeepSpeed names", "deepspeed", text)


def deepspeed_config_problems(written: dict, config: dict, world: int) -> tuple[list[Problem], Any]:
    """Every key DeepSpeedConfig refuses in `config` (the file with its "auto" values filled), and the
    DeepSpeedConfig it builds (None when it refused something)."""
    build = _config_class()
    work = copy.deepcopy(config)
    problems: list[Problem] = []
    for _ in range(MAX_ROUNDS):
        try:
            ds = build(copy.deepcopy(work), world)
        except Exception as err:  # AssertionError, ValueError, pydantic's ValidationError: DeepSpeed's own words
            found = _pydantic_problems(err, work) if callable(getattr(err, "errors", None)) else []
            if not found:
                return [*problems, _other_problem(err, written, config, world)], None
            problems += [problem for _, problem in found]
            removable = [path for path, _ in found if path and _at(work, path) is not _MISSING]
            if len(removable) < len(found):  # a key that is missing or a whole block: nothing to set aside
                return problems, None
            for path in dict.fromkeys(removable):  # set the refused keys aside and ask again: the next block's
                parent = _at(work, path[:-1])
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
            continue
        return problems, (None if problems else ds)
    return problems, None


# ---------------------------------------------------------------------------------------------- deepspeed.initialize


def _whole_positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def step_dependent(key: str, written: Any, args: Any) -> bool:
    """Whether the runtime's value of a step key (scheduler.params.*_num_steps) waits for the data's step count.

    transformers fills warmup_num_steps with max(1, args.get_warmup_steps(steps)): a warmup_steps count (or 0)
    gives the same value whatever the steps, only a ratio (0 < warmup_steps < 1) needs them. A value DeepSpeed
    refuses (not a positive whole number) never matches.
    """
    if key == "scheduler.params.warmup_num_steps":
        return _whole_positive(written) and 0 < args.warmup_steps < 1
    return True


def engine_problems(config: dict, world: int) -> list[Problem]:
    """What deepspeed.initialize refuses in a config DeepSpeedConfig accepted: the optimizer and scheduler it
    builds by name, the warmup length its schedulers take, and the tensor-parallel groups it cuts."""
    import torch
    from deepspeed.runtime import lr_schedules
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    from deepspeed import __version__

    out = []
    optimizer = get(config, "optimizer.type")
    if isinstance(optimizer, str) and optimizer.lower() in DROPPED_OPTIMIZERS:
        out.append(
            Problem(
                "optimizer.type",
                optimizer,
                None,
                'set "type": "AdamW"',
                "deepspeed",
                f"DeepSpeed {__version__} has no 1-bit optimizers any more: deepspeed.initialize stops at it",
            )
        )
    elif (
        isinstance(optimizer, str)
        and optimizer.lower() not in DEEPSPEED_OPTIMIZERS
        and not hasattr(torch.optim, optimizer)  # the engine's fallback: getattr(torch.optim, type)
    ):
        out.append(
            Problem(
                "optimizer.type",
                optimizer,
                None,
                f"use one of {', '.join(DEEPSPEED_OPTIMIZERS)} (AdamW for the Trainer's default)",
                "deepspeed",
                f"DeepSpeed {__version__} knows no such optimizer, nor does torch.optim",
            )
        )
    scheduler = get(config, "scheduler.type")
    if isinstance(scheduler, str):
        if not hasattr(lr_schedules, scheduler) and not hasattr(torch.optim.lr_scheduler, scheduler):
            out.append(
                Problem(
                    "scheduler.type",
                    scheduler,
                    None,
                    f"use one of {', '.join(lr_schedules.VALID_LR_SCHEDULES)}, or remove the scheduler block "
                    "(the Trainer's lr_scheduler_type then runs)",
                    "deepspeed",
                    f"DeepSpeed {__version__} knows no such scheduler, nor does torch.optim.lr_scheduler",
                )
            )
        warmup = get(config, "scheduler.params.warmup_num_steps")
        if scheduler.startswith("Warmup") and warmup is not None and not _whole_positive(warmup):
            out.append(
                Problem(
                    "scheduler.params.warmup_num_steps",
                    warmup,
                    None,
                    'set it to "auto" (the Trainer fills max(1, warmup_steps))',
                    "deepspeed",
                    f"DeepSpeed {__version__}'s {scheduler} takes only a positive whole number, not {warmup!r}",
                )
            )
    size = get(config, "tensor_parallel.autotp_size")
    if _whole_positive(size) and size > 1 and (size > world or world % size):
        divisors = [n for n in range(1, world + 1) if world % n == 0]
        out.append(
            Problem(
                "tensor_parallel.autotp_size",
                size,
                None,
                f"give a size that divides the {world} GPU(s): {', '.join(map(str, divisors))} (1: none)",
                "deepspeed",
                f"the job has {world} GPU(s): DeepSpeed cuts them into groups of {size} for tensor parallelism",
            )
        )
    return out
