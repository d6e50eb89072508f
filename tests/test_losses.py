"""The seq2seq trainer's summed cross-entropy: fp32 like `cross_entropy(logits.float())`, without an fp32 copy of
NLLB's 256k-vocabulary logits (a chunk of rows at a time, the backward recomputing its chunk)."""

from __future__ import annotations

import pytest
import torch

from vtt.train.seq2seq import SummedCrossEntropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_summed_cross_entropy_equals_the_fp32_loss_and_its_gradient(dtype, monkeypatch):
    monkeypatch.setattr(SummedCrossEntropy, "CHUNK", 8)  # 37 rows: five chunks, the last one short
    torch.manual_seed(0)
    logits = torch.randn(37, 301, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 301, (37,))
    labels[::5] = -100
    got = SummedCrossEntropy.apply(logits, labels)
    (got * 0.5).backward()
    chunked_grad, logits.grad = logits.grad, None
    want = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    (want * 0.5).backward()
    assert got.dtype == torch.float32 and float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    assert chunked_grad.dtype == dtype
    torch.testing.assert_close(chunked_grad.float(), logits.grad.float(), rtol=1e-5, atol=1e-6)
    assert not chunked_grad[::5].any(), "a position without a label gets no gradient"
