"""The size of the model a trainer builds and what of it trains, from its config alone: built on the
meta device, no weights read, no network. The pre-flight check (memory) and the disk guard (checkpoint
size) count with it; the llava trainer freezes with the same function the check counts with.

    from vtt.models.size import parameter_count
    parameter_count("outputs/demo/models/tiny-llava", "llava")
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from vtt.models._compat import hf_deepspeed_config_set_aside

TRAINER_AUTO_CLASSES = {"llava": "AutoModelForImageTextToText", "seq2seq": "AutoModelForSeq2SeqLM"}


def freeze_vision_tower(model) -> None:
    """Keep a LLaVA's vision encoder as loaded: out of the optimizer, and no backward pass through it."""
    tower = getattr(getattr(model, "model", None), "vision_tower", None)
    if tower is None:
        raise ValueError(f"freeze_vision_tower: {type(model).__name__} has no model.vision_tower; set it to false")
    tower.requires_grad_(False)


class ParameterCount(NamedTuple):
    total: int
    trained: int
    largest_layer: int  # the most parameters one module holds itself: what ZeRO-3 gathers at once


def count_parameters(config, trainer: str | None, vision_frozen: bool = False) -> ParameterCount:
    """All, trained and largest-layer parameters of the model `trainer` builds from `config`."""
    import torch
    import transformers

    auto = getattr(transformers, TRAINER_AUTO_CLASSES.get(trainer or "", "AutoModel"))
    with torch.device("meta"), hf_deepspeed_config_set_aside():
        model = auto.from_config(config)
    if vision_frozen:
        freeze_vision_tower(model)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # as DeepSpeed's estimate_zero3_model_states_mem_needs_all_live counts it
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return ParameterCount(total, trained, largest)


@functools.lru_cache(maxsize=8)  # the pre-flight check and the save guard both ask at start
def parameter_count(model_name_or_path: str, trainer: str) -> int:
    """Parameters of the model in a local folder or a cached hub id (its config.json only)."""
    from transformers import AutoConfig

    return count_parameters(AutoConfig.from_pretrained(model_name_or_path), trainer)[0]
