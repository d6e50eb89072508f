"""Run configs: `jobs/<name>.yaml` parsed into typed arguments, with command-line overrides.

A run config is flat YAML in the TRL convention: vtt's own fields (below) beside the training
arguments under their upstream Hugging Face names. `--name value` on the command line overrides a
value; an unknown key, in the file or on the command line, is an error that names it.

    run, task, training = parse_run_config(["--config", "jobs/tiny-llava.yaml", "--learning_rate", "1e-3"])
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TRAINERS = ("llava", "seq2seq")
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


def make_parser(trainer: str):
    from trl import TrlParser

    return TrlParser((RunArguments, task_arguments_class(trainer), training_arguments_class(trainer)))


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
        raise ValueError(
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
    if use_cpu is None:
        import torch

        use_cpu = not torch.cuda.is_available()
    if use_cpu and "--use_cpu" not in argv:
        argv += ["--use_cpu", "true"]
    if use_cpu and "--use_liger_kernel" not in argv:
        argv += ["--use_liger_kernel", "false"]  # Liger's kernels are Triton GPU kernels
    parser = make_parser(trainer)
    run, task, training = parser.parse_args_and_config(argv)
    if run.global_batch_size is not None:
        world = world_size() if world is None else world
        steps = gradient_accumulation_for(run.global_batch_size, training.per_device_train_batch_size, world)
        if "--gradient_accumulation_steps" in argv and steps != training.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps={training.gradient_accumulation_steps} was given, but "
                f"global_batch_size={run.global_batch_size} needs {steps} on {world} process(es): give one of them"
            )
        if steps != training.gradient_accumulation_steps:
            # Parse again so TrainingArguments (and the DeepSpeed "auto" values it fills) see the derived value.
            run, task, training = parser.parse_args_and_config([*argv, "--gradient_accumulation_steps", str(steps)])
    return run, task, training
