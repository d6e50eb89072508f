"""Padding-free rows on the model's side: each packed sample's positions as if it were alone.

The collator (`VisionCollator(..., padding_free=True)`) lays a batch's samples end to end in one row with
`position_ids` restarting at 0 per sample and no attention mask; transformers then keeps attention inside
each sample (a block-diagonal mask on SDPA; the row boundaries on VARLEN, models/attention.py).

The Qwen-VL families place tokens in 3-D (mRoPE: time, height, width), computed by the model's own
`get_rope_index` from the visual grids. Run over a packed row, it numbers the samples one after the other:
each sample's first position (a text token, equal in all three rows) is the running maximum + 1, and
every later position is relative to it, so subtracting a sample's first position gives exactly the
positions it has alone. The model then takes (4, 1, T) positions — the text positions first (where the
samples restart), the three mRoPE rows after — the packed layout transformers documents for these models.

    enable_packed_positions(model)   # a Qwen2.5-VL / Qwen3-VL model; a no-op for 1-D RoPE families
"""

from __future__ import annotations

from typing import Any

import torch


def uses_mrope(model) -> bool:
    return hasattr(getattr(model, "model", None), "get_rope_index")


def mrope_positions(inner, kwargs: dict[str, Any]) -> torch.Tensor:
    """(4, 1, T) positions of a packed row whose `position_ids` (1, T) restart per sample."""
    text = kwargs["position_ids"]
    grids = {key: kwargs.get(key) for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    grids = {key: value for key, value in grids.items() if value is not None}
    spatial, _ = inner.get_rope_index(kwargs["input_ids"], mm_token_type_ids=kwargs["mm_token_type_ids"], **grids)
    sample = torch.cumsum(text[0] == 0, dim=0) - 1  # the sample each position belongs to
    firsts = torch.nonzero(text[0] == 0).reshape(-1)
    spatial = spatial - spatial[:, :, firsts][:, :, sample]
    return torch.cat([text[None].to(spatial.dtype), spatial])


def enable_packed_positions(model) -> bool:
    """Give a Qwen-VL model each packed sample's own 3-D positions (see the module docstring); True when hooked."""
    if not uses_mrope(model):
        return False
    inner = model.model

    def packed(module, args, kwargs):
        position_ids, input_ids = kwargs.get("position_ids"), kwargs.get("input_ids")
        if (
            position_ids is None
            or position_ids.dim() != 2
            or kwargs.get("attention_mask") is not None
            or input_ids is None
            or kwargs.get("mm_token_type_ids") is None
        ):
            return None  # not a packed training row: the model computes its positions as always
        kwargs["position_ids"] = mrope_positions(module, kwargs)
        return args, kwargs

    inner.register_forward_pre_hook(packed, with_kwargs=True)
    return True
