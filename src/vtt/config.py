"""Run configs: `jobs/<name>.yaml` parsed into typed arguments, with command-line overrides.

A run config is flat YAML in the TRL convention: vtt's own fields (below) beside the training
arguments under their upstream Hugging Face names. `--name value` on the command line overrides a
value; an unknown key, in the file or on the command line, is an error that names it.

    run, task, training = parse_run_config(["--config", "jobs/tiny-llava.yaml", "--learning_rate", "1e-3"])

The command line is read once, by `read_command`, into a RunCommand that every consumer receives.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vtt.files import shipped
from vtt.values import file_value_problems, options_of, raise_all, range_problems, refuse_tokens

TRAINERS = ("llava", "seq2seq")


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
    min_pixels: int | None = field(
        default=None, metadata={"help": "Qwen-VL: the fewest pixels a frame is resized to (default: the processor's)."}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Qwen-VL: the most pixels a frame is resized to (default: the processor's)."}
    )
    max_visual_tokens: int | None = field(
        default=None,
        metadata={"help": "Leave out (and report) a sample whose clip would give more visual tokens than this."},
    )
    fit_visual_tokens: bool = field(
        default=False,
        metadata={
            "help": "With max_visual_tokens: sample a clip over it down to the most frames that fit, spread over "
            "the whole clip, instead of leaving it out (not for families fed a fixed num_frames)."
        },
    )
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
            "(exact: no real token attends to the padding after it; vtt.models.attention)."
        },
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={
            "help": "Size each micro batch by tokens, not samples: samples are grouped so a group's predicted "
            "tokens (visual, from the containers, plus text) stay under this, and every rank's micro batch "
            "carries about as many; per_device_train_batch_size is then the mean group the step counts for "
            "(vtt.data.batches)."
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


# TRL's ModelConfig fields for adapters and quantisation, under its names (`use_peft`, `lora_r`, ...); the model's
# name, revision, dtype and attention are vtt's own fields or training arguments.
ADAPTER_FIELDS = (
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_parameters",
    "lora_modules_to_save",
    "lora_task_type",
    "use_rslora",
    "use_dora",
    "load_in_8bit",
    "load_in_4bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "bnb_4bit_quant_storage",
)
# lora_task_type as the trainer's model needs it (ModelConfig's default is a causal LM's).
LORA_TASK_TYPES = {"llava": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


@functools.cache
def task_arguments_class(trainer: str) -> type:
    """The trainer's own arguments with TRL ModelConfig's adapter fields beside them (one dataclass, one record).

    lora_target_modules left empty means vtt.models.adapters' defaults: the language model's linear layers.
    """
    from trl import ModelConfig

    own = VideoArguments if trainer == "llava" else Seq2SeqArguments
    adapter = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in ADAPTER_FIELDS:
            default = LORA_TASK_TYPES[trainer] if f.name == "lora_task_type" else f.default
            help_text = f.metadata.get("help", "")
            if f.name == "lora_target_modules":
                help_text = "Module names or a regex for LoRA; empty: the language model's linear layers (vtt)."
            adapter.append((f.name, f.type, field(default=default, metadata={**f.metadata, "help": help_text})))
    combined = dataclasses.make_dataclass(own.__name__, adapter, bases=(own,))
    combined.__module__ = __name__
    return combined


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


# Words the launchers add to a trainer's command line: which process reads it, not a run-config value.
LAUNCHER_OPTIONS = ("local_rank",)


@dataclass(frozen=True)
class RunCommand:
    """A run's command line, read once: the run config it names, that file's values, and the overrides.

    Every consumer (the parse, the offline check, the Hub plan, the disk pre-flight, `vtt check`, the
    launchers) reads the command from here, so `--config X`, `--config=X` and `--name=value` mean the same
    everywhere.
    """

    config: Path | None
    file_values: dict[str, Any]
    overrides: tuple[str, ...]  # the command line without --config, each `--name=value` as `--name value`

    @property
    def argv(self) -> list[str]:
        """What TrlParser reads: the config (when there is one) and the overrides."""
        return [*(["--config", str(self.config)] if self.config else []), *self.overrides]

    @property
    def where(self) -> str:
        return str(self.config) if self.config else "the command line"

    def given(self, name: str) -> str | None:
        """The value `--name` has on the command line (the last one given), or None."""
        found = None
        for i, word in enumerate(self.overrides):
            if word == f"--{name}":
                follows = self.overrides[i + 1] if i + 1 < len(self.overrides) else "--"
                found = "true" if follows.startswith("--") else follows  # a bare --flag is a true bool
        return found

    def value(self, name: str) -> Any:
        """`name` as the run will see it: the command line's (YAML-typed, as TrlParser types the file), else the
        file's."""
        given = self.given(name)
        return yaml.safe_load(given) if given is not None else self.file_values.get(name)

    def values(self) -> dict[str, Any]:
        """The run config as given: the file's values with the command line's on top (for the model card)."""
        names = [w[2:] for w in self.overrides if w.startswith("--") and w[2:] not in LAUNCHER_OPTIONS]
        return {**self.file_values, **{name: self.value(name) for name in names}}

    def without(self, name: str) -> RunCommand:
        """This command with `--name VALUE` taken off the command line."""
        words, skip = [], False
        for i, word in enumerate(self.overrides):
            if skip:
                skip = False
            elif word == f"--{name}":
                skip = i + 1 < len(self.overrides) and not self.overrides[i + 1].startswith("--")
            else:
                words.append(word)
        return dataclasses.replace(self, overrides=tuple(words))

    @property
    def trainer(self) -> str:
        """The trainer the run config names (`--trainer` on the command line wins over the file's `trainer:`)."""
        if self.config is None and self.given("trainer") is None:
            raise ValueError("no --config given: pass a run config such as jobs/tiny-llava.yaml")
        trainer = self.value("trainer")
        if trainer not in TRAINERS:
            raise ValueError(f"{self.where}: field 'trainer' is {trainer!r}; set it to one of {', '.join(TRAINERS)}")
        return trainer


def run_command(config: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunCommand:
    """The RunCommand of a run config (None: none) and its `--name value` overrides, as vtt's commands take them."""
    return read_command([*(["--config", str(config)] if config else []), *overrides])


def read_command(argv: list[str] | tuple[str, ...] | RunCommand | None = None) -> RunCommand:
    """`argv` (default: this process's command line; or `--config FILE --name value ...`) as a RunCommand."""
    if isinstance(argv, RunCommand):
        return argv
    if argv is None:
        argv = sys.argv[1:]
    words: list[str] = []
    for word in argv:
        if word.startswith("--") and "=" in word:  # --config=X, and the launcher's --local_rank=0
            words += word.split("=", 1)
        else:
            words.append(word)
    config = None
    if "--config" in words:
        at = words.index("--config")
        if at + 1 >= len(words):
            raise ValueError("--config needs a run config file, such as jobs/tiny-llava.yaml")
        config = Path(words[at + 1])
        del words[at : at + 2]
        if "--config" in words:
            raise ValueError("--config is given twice: give one run config")
    return RunCommand(config, read_yaml(config) if config else {}, tuple(words))


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


def _parse(parser, argv: list[str]) -> tuple[Any, ...]:
    with warnings.catch_warnings():
        # TRL's SFTConfig sets this deprecated alias by itself on every parse; nothing a user can change.
        warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
        return parser.parse_args_and_config(argv)


def parse_run_config(
    command: RunCommand | list[str], world: int | None = None, use_cpu: bool | None = None
) -> tuple[Any, Any, Any]:
    """(run, task, training) arguments from `--config FILE` and `--name value` overrides.

    gradient_accumulation_steps is derived from global_batch_size for `world` processes (default: the
    launcher's WORLD_SIZE). On a machine without CUDA, use_cpu is switched on unless given: the
    DeepSpeed launchers need it on CPU (NOTES.md), and a config stays the same on GPU and CPU; Liger's
    GPU kernels (use_liger_kernel) are switched off there for the same reason.
    """
    command = read_command(command)
    trainer, path, data = command.trainer, command.where, command.file_values
    refuse_tokens(path, data)
    refuse_tokens("the command line", options_of(list(command.overrides)))
    argv = command.argv
    deepspeed = command.value("deepspeed")
    if isinstance(deepspeed, str) and deepspeed and not Path(deepspeed).exists() and shipped(deepspeed).exists():
        argv += ["--deepspeed", str(shipped(deepspeed))]  # vtt's own deepspeed/*.json, from any folder
    parser = make_parser(trainer)
    raise_all(path, file_value_problems(data, parser.dataclass_types))
    if use_cpu is None:
        import torch

        use_cpu = not torch.cuda.is_available()
    if use_cpu and command.given("use_cpu") is None:
        argv += ["--use_cpu", "true"]
    if use_cpu and command.given("use_liger_kernel") is None:
        argv += ["--use_liger_kernel", "false"]  # Liger's kernels are Triton GPU kernels
    try:
        run, task, training = _parse(parser, argv)
    except ValueError as err:  # the command line's, or TrainingArguments' own checks (warmup_steps < 0)
        raise ValueError(f"{path}: {err}") from None
    raise_all(path, range_problems((run, task, training), command.overrides))
    if run.global_batch_size is not None:
        world = world_size() if world is None else world
        try:
            steps = gradient_accumulation_for(run.global_batch_size, training.per_device_train_batch_size, world)
        except BatchLayoutError as err:
            err.arguments = (run, task, training)
            raise
        if command.given("gradient_accumulation_steps") is not None and steps != training.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps={training.gradient_accumulation_steps} was given, but "
                f"global_batch_size={run.global_batch_size} needs {steps} on {world} process(es): give one of them"
            )
        if steps != training.gradient_accumulation_steps:
            # Parse again so TrainingArguments (and the DeepSpeed "auto" values it fills) see the derived value.
            run, task, training = _parse(parser, [*argv, "--gradient_accumulation_steps", str(steps)])
    return run, task, training
