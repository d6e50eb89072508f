"""Checks of the values a config holds, before anything runs: types and ranges of the run config's fields,
and Hugging Face tokens (refused in every config and profile: those are committed and rendered into scripts).

    python -c "from vtt.values import refuse_tokens; refuse_tokens('x.yaml', {'note': 'hf_' + 'a' * 34})"
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

# A Hugging Face access token (hf_ and 34 letters/digits today): refused wherever a config or profile holds
# one, since configs are committed and rendered into job scripts. The token is read from the environment.
HF_TOKEN_VALUE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")
TOKEN_FIX = (
    "remove it: a token is never written into a config or a job script. Export HF_TOKEN in the shell you "
    "submit from (sbatch passes it on), or use the token file huggingface_hub reads ($HF_HOME/token)"
)


def mask_token(token: str) -> str:
    return f"{token[:3]}…{token[-4:]}"  # enough to tell which token it is, too little to use it


def tokens_in(data: Any, key: str = "") -> list[tuple[str, str]]:
    """(dotted key, masked token) for every string in `data`, nested anywhere, that holds a Hugging Face token."""
    found = []
    if isinstance(data, dict):
        for name, value in data.items():
            name = str(name)
            if HF_TOKEN_VALUE.search(name):  # a token pasted as a key
                found.append((f"{key}{'.' if key else ''}{HF_TOKEN_VALUE.sub('…', name)}", mask_token(name)))
            found += tokens_in(value, f"{key}{'.' if key else ''}{name}")
    elif isinstance(data, (list, tuple)):
        for i, item in enumerate(data):
            found += tokens_in(item, f"{key}[{i}]")
    elif isinstance(data, str):
        found += [(key, mask_token(match.group())) for match in HF_TOKEN_VALUE.finditer(data)]
    return found


def refuse_tokens(where: str | Path, data: Any) -> None:
    """A ValueError naming each key of `data` that holds a Hugging Face token (masked, never the token)."""
    found = tokens_in(data)
    if found:
        keys = ", ".join(f"{key} ({masked})" for key, masked in found)
        holds = "holds" if len(found) == 1 else "hold"
        raise ValueError(f"{where}: {keys} {holds} what looks like a Hugging Face token: {TOKEN_FIX}")


# ---------------------------------------------------------------------------------------------- value checks
# argparse converts and checks only what the command line gives; a YAML value reaches the dataclasses as YAML
# typed it (num_frames: 2.5 stays 2.5), and no dataclass checks ranges. Both are checked here, at parse time,
# so `vtt check`/`render`/`submit` refuse a bad config before the queue rather than the job at its first step.


def _kind(annotation: Any) -> tuple[Any, bool]:
    """(the one type of a field, whether None is allowed); (None, _) for unions of several types."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return (inner[0] if len(inner) == 1 else None), type(None) in args
    return annotation, False


def file_value_problems(data: dict[str, Any], classes: tuple[type, ...]) -> list[str]:
    """Unknown keys (with the closest known one), and values of the wrong type or outside a field's choices."""
    fields = {f.name: (f, cls) for cls in classes for f in dataclasses.fields(cls) if f.init}
    hints = {cls: typing.get_type_hints(cls) for cls in classes}
    problems = []
    for key, value in data.items():
        if key == "env":  # TrlParser's own key: variables exported before the parse
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            problems.append(f"unknown key '{key}': {f'did you mean {close[0]!r}? ' if close else ''}remove it")
            continue
        f, cls = fields[key]
        kind, optional = _kind(hints[cls][key])
        choices = f.metadata.get("choices")
        if value is None:
            if not optional and kind in (int, float, bool):
                problems.append(f"{key} = null: give a value (the default is {f.default!r})")
        elif isinstance(value, str):
            pass  # argparse converts and checks strings (max_steps: "ten" is its error)
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{key} = {value!r}: must be a whole number (it would not be rounded)")
        elif kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{key} = {value!r}: must be a number")
        elif kind is bool and not isinstance(value, bool):
            problems.append(f"{key} = {value!r}: write true or false")
        if choices and value is not None and value not in choices:
            problems.append(f"{key} = {value!r}: choose one of {', '.join(map(str, choices))}")
    return problems


# field -> (test of the value, given all arguments, what to write instead). A field absent from a trainer's
# arguments is skipped (num_frames is llava's, max_source_length seq2seq's).
RANGES: dict[str, tuple[Any, str]] = {
    "global_batch_size": (lambda v, a: v is None or v >= 1, "give 1 or more samples per optimizer step"),
    "num_frames": (lambda v, a: v >= 1, "give 1 or more frames per clip"),
    "fps": (lambda v, a: v is None or v > 0, "give a positive rate (frames a second), or null to use num_frames"),
    "max_frames": (lambda v, a: v is None or v >= 1, "give 1 or more, or null for no cap"),
    "max_reject_ratio": (lambda v, a: 0 <= v <= 1, "give a share from 0 (reject nothing) to 1"),
    "max_tokens_per_batch": (lambda v, a: v is None or v >= 1, "give 1 or more tokens, or null to batch by samples"),
    "max_source_length": (lambda v, a: v >= 1, "give 1 or more tokens"),
    "max_target_length": (lambda v, a: v >= 1, "give 1 or more tokens"),
    "per_device_train_batch_size": (lambda v, a: v >= 1, "give 1 or more samples per GPU"),
    "per_device_eval_batch_size": (lambda v, a: v >= 1, "give 1 or more samples per GPU"),
    "gradient_accumulation_steps": (lambda v, a: v >= 1, "give 1 or more (or set global_batch_size)"),
    "max_steps": (lambda v, a: v == -1 or v >= 1, "give 1 or more optimizer steps, or -1 to train num_train_epochs"),
    "num_train_epochs": (
        lambda v, a: v > 0 or (v == 0 and a.max_steps > 0),
        "give a positive number of epochs (0 only with max_steps)",
    ),
    "learning_rate": (lambda v, a: v >= 0, "give a learning rate of 0 or more (5e-5, 2e-4, ...)"),
    "weight_decay": (lambda v, a: v >= 0, "give 0 or more"),
    "adam_beta1": (lambda v, a: 0 <= v < 1, "give a value from 0 up to (not including) 1, like 0.9"),
    "adam_beta2": (lambda v, a: 0 <= v < 1, "give a value from 0 up to (not including) 1, like 0.999"),
    "adam_epsilon": (lambda v, a: v >= 0, "give 0 or more, like 1e-8"),
    "max_grad_norm": (lambda v, a: v >= 0, "give 0 or more (0 turns clipping off)"),
    "label_smoothing_factor": (lambda v, a: 0 <= v < 1, "give a share from 0 up to (not including) 1"),
    "logging_steps": (
        lambda v, a: v > 0 or a.logging_strategy != "steps",
        "give a positive number of steps (or a fraction of the run below 1)",
    ),
    "eval_steps": (
        lambda v, a: v is None or v > 0 or a.eval_strategy != "steps",
        "give a positive number of steps, or null to follow logging_steps",
    ),
    "save_steps": (
        lambda v, a: v > 0 or a.save_strategy != "steps",
        'give a positive number of steps (or a fraction of the run below 1), or save_strategy: "no"',
    ),
    "save_total_limit": (lambda v, a: v is None or v >= 1, "give 1 or more checkpoints to keep, or null to keep all"),
    "dataloader_num_workers": (lambda v, a: v >= 0, "give 0 (load in the training process) or more workers"),
    "dataloader_prefetch_factor": (lambda v, a: v is None or v >= 1, "give 1 or more batches, or null"),
    "eval_accumulation_steps": (lambda v, a: v is None or v >= 1, "give 1 or more, or null"),
    "seed": (lambda v, a: 0 <= v < 2**32, "give a seed from 0 to 4294967295 (numpy's range)"),
    "data_seed": (lambda v, a: v is None or 0 <= v < 2**32, "give a seed from 0 to 4294967295, or null"),
    "ddp_timeout": (lambda v, a: v >= 1, "give 1 or more seconds"),
    "max_length": (lambda v, a: v is None or v >= 1, "give 1 or more tokens, or null for no truncation"),
    "dataset_num_proc": (lambda v, a: v is None or v >= 1, "give 1 or more processes, or null"),
    "generation_max_length": (lambda v, a: v is None or v >= 1, "give 1 or more tokens, or null"),
    "generation_num_beams": (lambda v, a: v is None or v >= 1, "give 1 or more beams, or null"),
}


def range_problems(arguments: tuple[Any, ...], argv: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`field = value: fix` for every value outside its range in the parsed `arguments` (the last one holds
    the training arguments); a value given on the command line says so."""
    merged = _Merged(arguments)
    problems = []
    for name, (ok, fix) in RANGES.items():
        holder = next((args for args in arguments if hasattr(args, name)), None)
        if holder is None:
            continue
        value = getattr(holder, name)
        if isinstance(value, (int, float)) and not ok(value, merged):
            given = f" (--{name} on the command line)" if f"--{name}" in argv else ""
            problems.append(f"{name} = {value!r}{given}: {fix}")
    return problems


class _Merged:
    """Attribute access over several argument dataclasses (the range tests read across them)."""

    def __init__(self, arguments: tuple[Any, ...]):
        self._arguments = arguments

    def __getattr__(self, name: str) -> Any:
        for args in self._arguments:
            if hasattr(args, name):
                return getattr(args, name)
        raise AttributeError(name)


def options_of(argv: list[str]) -> dict[str, str]:
    """A command line as {--name: value} (other words by position), for errors that name the option."""
    out = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            out[word] = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        elif i == 0 or not argv[i - 1].startswith("--"):
            out[f"word {i + 1}"] = word
    return out


def raise_all(where: str | Path, problems: list[str]) -> None:
    if len(problems) == 1:
        raise ValueError(f"{where}: {problems[0]}")
    if problems:
        raise ValueError(f"{where}: {len(problems)} bad values:\n" + "\n".join(f"  {line}" for line in problems))
