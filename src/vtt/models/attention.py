"""Causal attention that lets PyTorch's SDPA run its flash kernel on right-padded training batches.

TRL's collators flush every row to the left, so a batch's padding sits at the end of each row. In a
causal model no real token attends to a later position, so that padding changes nothing the loss
sees (its positions carry label -100). transformers' `sdpa_mask` still builds a 4D mask for it, and
given an explicit mask SDPA cannot use its flash kernel: it falls back to the memory-efficient one,
which also computes the masked upper triangle. Here such batches get no mask (`is_causal=True`);
every other case (left padding, generation with a cache, sliding windows, packed rows) is passed to
transformers' own `sdpa_mask` unchanged.

    enable_right_padded_sdpa(model)   # the text model of a LLaVA, or a causal LM, on "sdpa"
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

NAME = "sdpa_right_padded"


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when each row is ones then zeros (padding only at the end)."""
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def right_padded_sdpa_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs,
) -> torch.Tensor | None:
    """`sdpa_mask`, except that a plain causal mask over a right-padded batch is left to `is_causal`."""
    if (
        allow_is_causal_skip
        and mask_function is causal_mask_function  # no sliding window, packing or other overlay
        and kwargs.get("local_size") is None
        and q_offset == 0
        and kv_offset == 0
        and q_length == kv_length  # a whole sequence at once: training or prefill of an empty cache
        and attention_mask is not None
        and attention_mask.dim() == 2
        and attention_mask.shape[-1] == kv_length
        and not torch.compiler.is_compiling()
        and is_right_padded(attention_mask)
    ):
        return None
    return sdpa_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset,
        kv_offset,
        mask_function,
        attention_mask,
        allow_is_causal_skip=allow_is_causal_skip,
        **kwargs,
    )


def register() -> None:
    """Make NAME known to transformers (its public registries), once a model asks for it; repeats are no-ops."""
    AttentionInterface.register(NAME, sdpa_attention_forward)
    AttentionMaskInterface.register(NAME, right_padded_sdpa_mask)


def enable_right_padded_sdpa(model) -> bool:
    """Switch the model's causal text part from "sdpa" to NAME; return whether it was switched.

    Only SDPA is switched: "eager" or flash-attention implementations chosen on purpose stay as they are.
    """
    config = model.config
    key, text_config = ("text_config", config.text_config) if hasattr(config, "text_config") else ("", config)
    if text_config._attn_implementation != "sdpa":
        return False
    register()
    model.set_attn_implementation({key: NAME} if key else NAME)
    return True
