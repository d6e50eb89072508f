"""Padding-free batches: a batch's samples laid end to end in one row train exactly as the same samples padded.

Per family, tiny random models from `vtt tiny`, the demo's real clips of different lengths: the loss and
every gradient of the packed row equal the padded batch's, with transformers' SDPA (a block-diagonal mask
from the restarting positions) and with vtt's variable-length attention (models/attention.VARLEN, the GPU
path; row by row on CPU), which also runs the Qwen-VL towers' windows in one call.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from test_video_families import SETTINGS, VIDEO_FAMILIES, loaded

from vtt.data.collate import VisionCollator, sampling_for
from vtt.data.datasets import llava_dataset
from vtt.models import attention as vtt_attention
from vtt.models.attention import boundaries, enable_varlen_attention
from vtt.models.packing import enable_packed_positions

FAMILIES = [*VIDEO_FAMILIES, "llava"]


def rows_of(processor, family, manifest) -> list[dict]:
    data = llava_dataset(manifest, sampling_for(processor, family, SETTINGS), None, 1.0, family.fixed_frames)
    rows = [data[0], data[1], data[2]]
    rows[1]["completion"][0]["content"][0]["text"] += " and then it stops, slowly"  # rows of unequal length
    return rows


def loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def record_rows(seen: list, real, *args):
    seen.append(args[3])  # the row boundaries of each call
    return real(*args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_video_families import tiny as family_fixture

    return family_fixture.__wrapped__(tmp_path_factory)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_packed_row_has_the_loss_and_gradients_of_the_same_samples_padded(name, tiny, demo_inputs, monkeypatch):
    processor, model, family = loaded(tiny(name))
    model.eval()  # no dropout: the two layouts must see the same function
    rows = rows_of(processor, family, demo_inputs["manifest"])
    padded = VisionCollator(processor, family, pad_to_multiple_of=8)(rows)
    packed = VisionCollator(processor, family, padding_free=True)(rows)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    real = int(padded["attention_mask"].sum())
    assert packed["input_ids"].shape[1] == real < padded["input_ids"].numel(), "packed carries no padding"
    assert boundaries(packed["position_ids"]).tolist()[-1] == real and len(boundaries(packed["position_ids"])) == 4

    want_loss, want = loss_and_grads(model, padded)
    for attention in ("sdpa", "varlen"):
        twin = copy.deepcopy(model)
        enable_packed_positions(twin)
        calls = []
        if attention == "varlen":
            enable_varlen_attention(twin)
            counted = functools.partial(record_rows, calls, vtt_attention._varlen)
            monkeypatch.setattr(vtt_attention, "_varlen", counted)
        loss, grads = loss_and_grads(twin, packed)
        if attention == "varlen":  # every layer, text and vision, went through it: text on the samples' rows
            assert [len(cu) - 1 for cu in calls].count(len(rows)) >= twin.config.get_text_config().num_hidden_layers
        assert loss == pytest.approx(want_loss, rel=1e-5), attention
        assert grads.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(grads[key], want[key], rtol=1e-4, atol=1e-6, msg=f"{attention}: {key}")


@pytest.mark.parametrize("left", [False, True])
def test_varlen_attention_equals_sdpa_on_padded_rows_and_on_a_cached_decode_step(left):
    """Generation runs a model trained on VARLEN as it is: left-padded prompts, then one query against a cache."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0 if left else 1
    mask[1, 4:] = 1 if left else 0
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()[None, None] & mask[:, None, None, :].bool()
    want = sdpa_attention_forward(module, q, k, v, allowed, is_causal=False)[0]
    got = vtt_attention.varlen_attention_forward(module, q, k, v, mask)[0]
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real])
    step = vtt_attention.varlen_attention_forward(module, q[:, :, -1:], k, v, mask)[0]  # the last query alone
    torch.testing.assert_close(step[:, 0][real[:, -1]], want[:, -1][real[:, -1]])
