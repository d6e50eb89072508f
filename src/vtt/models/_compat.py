"""Every patch of a dependency's private API below the trainers (models/, and check/ above it).

Written for transformers 5.24.0 (pyproject.toml pins it); tests/test_compat.py fails when an upgrade
changes what a patch relies on, so each one is looked at again rather than failing silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

WRITTEN_FOR = {"transformers": "5.24.0"}


@contextlib.contextmanager
def hf_deepspeed_config_set_aside() -> Iterator[None]:
    """No live DeepSpeed config for the length of the block; the one registered before is put back after.

    A parsed ZeRO-3 TrainingArguments (or an HfDeepSpeedConfig) registers itself process-wide, and
    transformers then builds every model under deepspeed.zero.Init: a process group on port 29500 and
    weights on meta tensors. Counting a model's parameters and replaying the runtime's config checks must
    leave that registration as it was. transformers keeps it in `_hf_deepspeed_config_weak_ref` and
    offers `unset_hf_deepspeed_config()` but no way to get it back.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def llava_onevision_video_tokens(processor, frames: int, height: int, width: int) -> int:
    """The `<video>` tokens LLaVA-OneVision's processor writes for a clip of `frames` frames of height x width.

    Its processor counts them in `_get_num_multimodal_tokens(video_sizes=[(frames, height, width)])`
    (frames x pooled features a frame + one newline), the same formula its `replace_video_token` writes;
    there is no public method for it.
    """
    counts = processor._get_num_multimodal_tokens(video_sizes=[(frames, height, width)])
    return int(counts["num_video_tokens"][0])


def no_input_grads_into(tower, trained_parts: tuple[str, ...] = ()) -> None:
    """Keep gradient checkpointing from back-propagating through a frozen vision tower.

    With activation checkpointing on, `PreTrainedModel._activation_checkpointing_enable` calls
    `enable_input_require_grads()`, which hooks the input embedding of *every* PreTrainedModel submodule
    so its output requires grad (for adapters on a frozen LM). A vision tower is one: its patch embedding
    (Qwen2.5-VL's `_input_embed_layer = "patch_embed"`, SigLIP's `patch_embedding`) then makes every frozen,
    checkpointed block build a graph, recompute and back-propagate input gradients that nothing uses —
    the tower's whole backward on each step. `enable_input_require_grads` skips a module whose
    `get_input_embeddings()` is None, so the frozen tower answers None — decided when asked (the Trainer
    enables checkpointing at train(), after adapters are added): an adapter inside the tower, or any
    trained parameter outside `trained_parts` (the projector the tower holds), keeps the hook.
    """
    embeddings = tower.get_input_embeddings

    def frozen() -> bool:
        return not any(
            p.requires_grad for name, p in tower.named_parameters() if name.split(".")[0] not in trained_parts
        )

    tower.get_input_embeddings = lambda: None if frozen() else embeddings()


def set_attention_unchecked(model, name: str) -> None:
    """Put every config of `model` (the top one, text and vision) on the registered attention function `name`.

    `set_attn_implementation` checks a name holding "flash" by importing the flash-attn package or a Hub
    kernel (`lazy_import_flash_attention`), neither of which VARLEN uses (torch's own varlen kernel); the
    name must hold "flash" for transformers to hand it the vision towers' `cu_seqlens`. So the configs'
    `_attn_implementation_internal`, what `config._attn_implementation` reads, is set directly.
    """
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            config._attn_implementation_internal = name
