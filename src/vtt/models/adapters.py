"""Adapters (LoRA, DoRA, rsLoRA) and QLoRA's 4-bit base from the run config's TRL ModelConfig fields, both trainers.

    use_peft: true            # in a run config, or --use_peft true --lora_r 16 on the command line
    model = wrap(model, task, "llava")        # the trainer, after from_pretrained
    model = load_trained("outputs/runs/llava-lora")                # vtt predict / eval: base + adapter
    merge("outputs/runs/llava-lora", "outputs/runs/llava-merged")  # vtt merge

The adapter goes where a video model learns its task: by default on the language model's linear layers
(attention and MLP) and nowhere else. A broad name such as `q_proj` would also match the vision tower's
layers in most vision-language models; the default is a regex anchored at the language model, so the
tower gets LoRA only when lora_target_modules names it. The projector trains whole when
lora_modules_to_save names it (e.g. [multi_modal_projector]). For NLLB the default is the encoder's and
the decoder's attention and MLP. The LoraConfig itself is TRL's (`trl.get_peft_config`), the 4-bit
config TRL's `get_quantization_config` (bitsandbytes: CUDA only, refused on a CPU before any weight loads).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The Auto class each trainer loads its model with (vtt.models.size counts with the same).
AUTO_CLASSES = {"llava": "AutoModelForImageTextToText", "seq2seq": "AutoModelForSeq2SeqLM"}


def is_adapter(folder: str | Path) -> bool:
    """True for a folder holding a saved adapter (a run trained with use_peft, or one of its checkpoints)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapted_part(model: Any, trainer: str) -> tuple[str, Any]:
    """(module path, module) of what gets LoRA by default: the language model of a vision-language model, the
    encoder-decoder of NLLB (its lm_head, tied to the embeddings, stays out)."""
    if trainer == "seq2seq":
        return "model", model.get_submodule("model")
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name, module
    raise ValueError(f"{type(model).__name__}: found no language model to put LoRA on: set lora_target_modules")


def default_targets(model: Any, trainer: str) -> str:
    """A regex (peft's full-match form) for every linear layer of the adapted part, and only there."""
    import torch

    prefix, part = adapted_part(model, trainer)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in part.named_modules() if isinstance(m, torch.nn.Linear)})
    if not leaves:
        raise ValueError(f"{prefix} of {type(model).__name__} has no linear layer: set lora_target_modules")
    return rf"{re.escape(prefix)}\..*\.({'|'.join(leaves)})"


def lora_config(task: Any, model: Any, trainer: str):
    """TRL's LoraConfig for the run config's adapter fields, aimed at default_targets when none are named."""
    from trl import get_peft_config

    config = get_peft_config(task)
    if not task.lora_target_modules and not task.lora_target_parameters:
        config.target_modules = default_targets(model, trainer)
    return config


def quantization_config(task: Any, training: Any):
    """TRL's BitsAndBytesConfig for load_in_4bit / load_in_8bit (None without them), computing in the training's
    precision; a ValueError off CUDA, or for both at once."""
    if not (task.load_in_4bit or task.load_in_8bit):
        return None
    if task.load_in_4bit and task.load_in_8bit:
        raise ValueError("load_in_4bit and load_in_8bit are both set: choose one (4-bit is QLoRA)")
    import torch

    if not torch.cuda.is_available():
        bits = 4 if task.load_in_4bit else 8
        raise ValueError(
            f"load_in_{bits}bit (QLoRA) quantises the base model with bitsandbytes, which needs a CUDA GPU, and this "
            f"machine has none: run it on a GPU node, or set load_in_{bits}bit: false to train LoRA on full weights"
        )
    if not task.use_peft:
        raise ValueError("load_in_4bit/load_in_8bit train only adapters: set use_peft: true (QLoRA)")
    from dataclasses import asdict
    from types import SimpleNamespace

    from trl import get_quantization_config

    # TRL takes the compute dtype from ModelConfig.dtype, which vtt's run config leaves to bf16/fp16.
    dtype = "bfloat16" if training.bf16 else "float16" if training.fp16 else "float32"
    return get_quantization_config(SimpleNamespace(**asdict(task), dtype=dtype))


def load_options(task: Any, training: Any) -> dict[str, Any]:
    """Extra from_pretrained options: the quantisation config and its device map (one GPU per process)."""
    quantization = quantization_config(task, training)
    if quantization is None:
        return {}
    import os

    # Each process holds its own quantised copy on its own GPU (TRL 1.16 has no get_kbit_device_map any more).
    return {"quantization_config": quantization, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def wrap(model: Any, task: Any, trainer: str) -> Any:
    """`model` with the run's adapter added (only its parameters train); `model` itself without use_peft."""
    if not task.use_peft:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if task.load_in_4bit or task.load_in_8bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(task, model, trainer))


def saved_adapter_problems(folder: str | Path, trained: dict[str, Any]) -> list[str]:
    """Why the adapter saved in `folder` is not `trained` (peft's state dict of the live model, gathered whole):
    a missing or extra key, a wrong shape (ZeRO-3 saving its empty partitions) or other values; [] when it is."""
    import torch
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        return [f"{path}: no such file: the save wrote no adapter"]
    saved = load_file(path)
    problems = [f"{key}: trained but not saved" for key in sorted(trained.keys() - saved.keys())]
    problems += [f"{key}: saved but not in the model" for key in sorted(saved.keys() - trained.keys())]
    for key in sorted(trained.keys() & saved.keys()):
        want, got = trained[key], saved[key]
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{key}: saved with shape {tuple(got.shape)}, the model's is {tuple(want.shape)}")
        elif not torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-3):
            problems.append(f"{key}: saved values differ from the trained ones")
    return problems


def trainable_summary(model: Any) -> str:
    """`trainable 1,234 of 5,678 parameters (21.7%)`, as peft counts them (ZeRO-3's partitions and 4-bit packed
    weights whole)."""
    trainable, total = model.get_nb_trainable_parameters()
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def base_of(folder: str | Path) -> str:
    """The base model an adapter folder was trained on (peft records it in adapter_config.json)."""
    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{Path(folder) / ADAPTER_CONFIG}: names no base_model_name_or_path to load the adapter on")
    return base


def load_trained(folder: str | Path, trainer: str, **options: Any) -> Any:
    """The model a run saved: its full weights, or its base with the adapter applied (not merged)."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[trainer])
    if not is_adapter(folder):
        return auto.from_pretrained(folder, **options)
    from peft import PeftModel

    return PeftModel.from_pretrained(auto.from_pretrained(base_of(folder), **options), folder)


def merge(folder: str | Path, out: str | Path, trainer: str) -> Path:
    """Write base + adapter of `folder` as one full model into `out` (loadable without peft)."""
    if not is_adapter(folder):
        raise ValueError(f"{folder}: holds no adapter ({ADAPTER_CONFIG}): it is a full model already")
    merged = load_trained(folder, trainer).merge_and_unload()
    merged.save_pretrained(out)
    return Path(out)
