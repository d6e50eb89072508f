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

import functools
import inspect
import types

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


# Padding-free rows and the vision towers' windows: one variable-length attention call instead of a padded
# batch (or a Python loop of small SDPA calls, one per window). "flash" in the name is what transformers
# keys on (`is_flash_attention_requested`): it then gives the vision towers' `cu_seqlens` to the attention
# function, leaves packed rows unmasked, and passes their restarting `position_ids` down to it.
VARLEN = "vtt_flash_varlen"


def boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """The cumulative row boundaries (int32, first 0, last the length) of one packed row of positions (1, T):
    a row starts where its position is 0."""
    positions = position_ids.reshape(-1)
    starts = torch.nonzero(positions == 0).reshape(-1)
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([positions.numel()])]).to(torch.int32)


@functools.cache
def _varlen_kernel():
    """torch's varlen flash attention (`torch.nn.attention.varlen`, torch >= 2.10) with its parameters, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return types.SimpleNamespace(function=varlen_attn, parameters=inspect.signature(varlen_attn).parameters)


def _varlen(query, key, value, cu: torch.Tensor, longest: int, causal: bool, scale: float | None) -> torch.Tensor:
    """Attention within each row of packed (T, H, D) tensors. GPU: torch's varlen flash kernel; elsewhere (and
    for the CPU tests) SDPA row by row, the same result."""
    kernel = _varlen_kernel() if query.is_cuda else None
    if kernel is not None:
        if key.shape[1] != query.shape[1]:  # grouped-query attention: the kernel takes equal head counts
            repeat = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
        # torch 2.10/2.11 name causality `is_causal`; later releases take a (left, right) window instead
        mode = {"is_causal": causal} if "is_causal" in kernel.parameters else {"window_size": (-1, 0 if causal else -1)}
        return kernel.function(query, key, value, cu, cu, longest, longest, scale=scale, **mode)
    rows = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[0] != q.shape[0]
        )
        rows.append(out.transpose(0, 1))
    return torch.cat(rows)


def _attend_cache(query, key, value, attention_mask: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """New queries (the last positions) against a cache of keys: causal, padded keys (2-D mask) left out."""
    length, cached = query.shape[2], key.shape[2]
    allowed = torch.ones(length, cached, dtype=torch.bool, device=query.device).tril(cached - length)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -cached:].bool()
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, scale=scale, enable_gqa=key.shape[1] != query.shape[1]
    )
    return out.transpose(1, 2).contiguous()


def varlen_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    position_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: (batch, heads, length, dim) in, (batch, length, heads, dim) out.

    The rows are `cu_seq_lens_q` when given (a vision tower's windows), else the restarts of `position_ids`
    in one packed row, else each batch row whole (its padding, under a 2-D `attention_mask`, left out).
    """
    if sliding_window is not None or dropout:
        raise NotImplementedError(f"{VARLEN}: sliding windows and attention dropout are not supported")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    batch, heads, length, dim = query.shape
    if key.shape[2] != length:  # generation against a cache: no rows to find, SDPA under the two masks
        return _attend_cache(query, key, value, attention_mask, scaling), None
    flat = [t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value)]
    kept = None
    if cu_seq_lens_q is not None:
        cu = cu_seq_lens_q.to(torch.int32)
    elif attention_mask is None and batch == 1 and position_ids is not None and position_ids.dim() == 2:
        cu = boundaries(position_ids).to(query.device)
    else:
        if attention_mask is None:
            lengths = torch.full((batch,), length, device=query.device)
        else:  # flash_attention_mask's (batch, length) padding mask
            kept = torch.nonzero(attention_mask[:, -length:].reshape(-1).bool()).reshape(-1)
            flat = [t[kept] for t in flat]
            lengths = attention_mask[:, -length:].sum(-1)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(max_length_q) if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
    out = _varlen(*flat, cu, longest, causal, scaling)
    if kept is not None:
        out = out.new_zeros(batch * length, heads, dim).index_copy_(0, kept, out)
    return out.reshape(batch, length, heads, dim), None


def enable_varlen_attention(model) -> None:
    """Every part of the model (text and vision) on VARLEN: packed rows and windowed towers in one call each."""
    from transformers.masking_utils import flash_attention_mask

    from vtt.models._compat import set_attention_unchecked

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, flash_attention_mask)
    set_attention_unchecked(model, VARLEN)
