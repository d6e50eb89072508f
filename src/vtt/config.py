"""Run configs: `jobs/<name>.yaml` parsed into typed arguments, with command-line overrides.

A run config is flat YAML in the TRL convention: vtt's own fields (below) beside the training
arguments under their upstream Hugging Face names. `--name value` on the command line overrides a
value; an unknown key, in the file or on the command line, is an error that names it.

    run, task, training = parse_run_config(["--config", "jobs/tiny-llava.yaml", "--learning_rate", "1e-3"])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TRAINERS = ("llava", "seq2seq")
# A Hugging Face access token (hf_ and 34 letters/digits today): refused wherever a config or profile holds
# one, since configs are committed and rendered into job scripts. The token is read from the environment.
HF_TOKEN_VALUE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")
TOKEN_FIX = (
    "remove it: a token is never written into a config or a job script. Export HF_TOKEN in the shell you "
    "submit from (sbatch passes it on), or use the token file huggingface_hub reads ($HF_HOME/token)"
)
# TRL's SFTConfig sets this deprecated alias by itself on every parse; nothing a user can change.
warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass
class RunArguments:
    """What every run names: the trainer, the model, the data, and the batch it wants."""

    trainer: str = field(metadata={"help": "Which trainer runs this config.", "choices": list(TRAINERS)})
    model_name_or_path: str = field(metadata={"help": "A hub id or a local folder made by save_pretrained."})
    dataset: str = field(
        metadata={"help": "A manifest (.jsonl/.csv of video, question, answer) or a folder made by `vtt prepare`."}
    )
    eval_dataset: str | None = field(default=None, metadata={"help": "Held-out data, in the same forms as dataset."})
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Samples per optimizer step over all GPUs. When set, gradient_accumulation_steps is derived "
            "from it: global_batch_size / (per_device_train_batch_size x world size)."
        },
    )
    generate_eval: bool = field(
        default=True,
        metadata={
            "help": "With eval_dataset: after training, rank 0 generates answers for it and scores them "
            "(BLEU, chrF, exact match) into output_dir/eval_generation.json, as `vtt eval` does."
        },
    )
    resume: bool = field(
        default=True,
        metadata={
            "help": "Resume from the newest complete checkpoint in output_dir when there is one (every start, "
            "requeued jobs included). false (`vtt run --no-resume`): start from step 0."
        },
    )
    hub_model_id_suffix: str | None = field(
        default=None, metadata={"help": "Repo name under $HF_USER_ID when push_to_hub is on and hub_model_id is not."}
    )


@dataclass
class VideoArguments:
    """The llava trainer's own settings: how frames are taken from each video, and what of the model trains."""

    num_frames: int = field(default=5, metadata={"help": "Frames sampled uniformly from each clip."})
    fps: float | None = field(
        default=None, metadata={"help": "Frames a second to sample instead of num_frames (capped by max_frames)."}
    )
    max_frames: int | None = field(default=None, metadata={"help": "At most this many frames with fps sampling."})
    video_backend: str = field(
        default="opencv", metadata={"help": "Decoder of the clips.", "choices": ["opencv", "pyav"]}
    )
    max_reject_ratio: float = field(
        default=0.05,
        metadata={"help": "Fail when more than this share of a manifest's samples is unusable (missing fields/files)."},
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Train the projector and language model only; the vision encoder keeps its loaded weights and "
            "runs without a backward pass (about a third less compute for SigLIP-so400m at 5 frames)."
        },
    )
    flash_sdpa: bool = field(
        default=True,
        metadata={
            "help": "Let SDPA run its flash kernel on right-padded batches instead of building a padding mask "
            "(exact: no real token attends to the padding after it; vtt.attention)."
        },
    )


@dataclass
class Seq2SeqArguments:
    """Text settings of the seq2seq trainer: question + video metadata -> caption."""

    src_lang: str = field(default="eng_Latn", metadata={"help": "NLLB code of the question's language."})
    tgt_lang: str = field(default="eng_Latn", metadata={"help": "NLLB code of the caption's language."})
    max_source_length: int = field(default=256, metadata={"help": "Tokens kept of question + metadata."})
    max_target_length: int = field(default=128, metadata={"help": "Tokens kept of the caption."})


def training_arguments_class(trainer: str) -> type:
    """The TrainingArguments subclass a trainer uses: TRL's SFTConfig or Seq2SeqTrainingArguments."""
    if trainer == "llava":
        from trl import SFTConfig

        return SFTConfig
    if trainer == "seq2seq":
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments
    raise ValueError(f"unknown trainer {trainer!r}: choose one of {', '.join(TRAINERS)}")


def task_arguments_class(trainer: str) -> type:
    return VideoArguments if trainer == "llava" else Seq2SeqArguments


def arguments_parser(*classes: type):
    """TRL's parser over `classes`, raising ValueError where argparse would print its whole usage and exit."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):  # `--num_frames 2.5`: argparse's own words ("invalid int value"), one line
            raise ValueError(message)

    return Parser(classes)


def make_parser(trainer: str):
    return arguments_parser(RunArguments, task_arguments_class(trainer), training_arguments_class(trainer))


class BatchLayoutError(ValueError):
    """global_batch_size does not divide for this world size: `vtt check` reports it as a finding and checks on
    with the arguments parsed so far (`arguments`: run, task, training)."""

    arguments: tuple[Any, Any, Any] | None = None


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


def _file_value_problems(data: dict[str, Any], classes: tuple[type, ...]) -> list[str]:
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


def _options(argv: list[str]) -> dict[str, str]:
    """A command line as {--name: value} (other words by position), for errors that name the option."""
    out = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            out[word] = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        elif i == 0 or not argv[i - 1].startswith("--"):
            out[f"word {i + 1}"] = word
    return out


def _raise_all(where: str | Path, problems: list[str]) -> None:
    if len(problems) == 1:
        raise ValueError(f"{where}: {problems[0]}")
    if problems:
        raise ValueError(f"{where}: {len(problems)} bad values:\n" + "\n".join(f"  {line}" for line in problems))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping, or a ValueError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a YAML mapping of name: value, found {type(data).__name__}")
    return data


def trainer_of(argv: list[str]) -> str:
    """The trainer a command line's run config names (`--trainer` wins over the file's `trainer:`)."""
    if "--trainer" in argv:
        return argv[argv.index("--trainer") + 1]
    if "--config" not in argv:
        raise ValueError("no --config given: pass a run config such as jobs/tiny-llava.yaml")
    path = argv[argv.index("--config") + 1]
    trainer = read_yaml(path).get("trainer")
    if trainer not in TRAINERS:
        raise ValueError(f"{path}: field 'trainer' is {trainer!r}; set it to one of {', '.join(TRAINERS)}")
    return trainer


def world_size() -> int:
    """Processes in this job, from the launcher's environment (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def gradient_accumulation_for(global_batch_size: int, micro_batch: int, world: int) -> int:
    """Accumulation steps that make `global_batch_size`, or a ValueError naming the values that would."""
    per_step = micro_batch * world
    if global_batch_size % per_step:
        fits = [g for g in range(1, 65) if global_batch_size % (micro_batch * g) == 0]
        micro = [m for m in range(1, global_batch_size + 1) if global_batch_size % (m * world) == 0]
        raise BatchLayoutError(
            f"global_batch_size={global_batch_size} is not a multiple of per_device_train_batch_size={micro_batch} "
            f"x world size {world} = {per_step}. GPU counts that divide it at this micro batch: {fits[:8]}; "
            f"micro batches that divide it on {world} GPU(s): {micro[:8]}"
        )
    return global_batch_size // per_step


def parse_run_config(argv: list[str], world: int | None = None, use_cpu: bool | None = None) -> tuple[Any, Any, Any]:
    """(run, task, training) arguments from `--config FILE` and `--name value` overrides.

    gradient_accumulation_steps is derived from global_batch_size for `world` processes (default: the
    launcher's WORLD_SIZE). On a machine without CUDA, use_cpu is switched on unless given: the
    DeepSpeed launchers need it on CPU (NOTES.md), and a config stays the same on GPU and CPU; Liger's
    GPU kernels (use_liger_kernel) are switched off there for the same reason.
    """
    argv = list(argv)
    trainer = trainer_of(argv)
    path = argv[argv.index("--config") + 1] if "--config" in argv else "the command line"
    data = read_yaml(path) if "--config" in argv else {}
    refuse_tokens(path, data)
    refuse_tokens("the command line", _options(argv))
    parser = make_parser(trainer)
    _raise_all(path, _file_value_problems(data, parser.dataclass_types))
    if use_cpu is None:
        import torch

        use_cpu = not torch.cuda.is_available()
    if use_cpu and "--use_cpu" not in argv:
        argv += ["--use_cpu", "true"]
    if use_cpu and "--use_liger_kernel" not in argv:
        argv += ["--use_liger_kernel", "false"]  # Liger's kernels are Triton GPU kernels
    try:
        run, task, training = parser.parse_args_and_config(argv)
    except ValueError as err:  # the command line's, or TrainingArguments' own checks (warmup_steps < 0)
        raise ValueError(f"{path}: {err}") from None
    _raise_all(path, range_problems((run, task, training), argv))
    if run.global_batch_size is not None:
        world = world_size() if world is None else world
        try:
            steps = gradient_accumulation_for(run.global_batch_size, training.per_device_train_batch_size, world)
        except BatchLayoutError as err:
            err.arguments = (run, task, training)
            raise
        if "--gradient_accumulation_steps" in argv and steps != training.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps={training.gradient_accumulation_steps} was given, but "
                f"global_batch_size={run.global_batch_size} needs {steps} on {world} process(es): give one of them"
            )
        if steps != training.gradient_accumulation_steps:
            # Parse again so TrainingArguments (and the DeepSpeed "auto" values it fills) see the derived value.
            run, task, training = parser.parse_args_and_config([*argv, "--gradient_accumulation_steps", str(steps)])
    return run, task, training
