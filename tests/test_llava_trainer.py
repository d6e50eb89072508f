"""The llava trainer's data path for LLaVA (frames as images): the processor fix, the loss mask, padding."""

from __future__ import annotations

from transformers import AutoModelForImageTextToText, AutoProcessor

from vtt.data.collate import VisionCollator
from vtt.data.datasets import llava_dataset
from vtt.models.families import family_of
from vtt.models.llava import fix_processor


def collator(processor, model, multiple=None) -> VisionCollator:
    return VisionCollator(processor, family_of(model.config, processor), multiple)


def test_processor_fix_fills_settings_from_model_config(demo_inputs):
    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model_config = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"]).config
    assert processor.patch_size is None  # as many hub processors ship
    filled = fix_processor(processor, model_config)
    assert set(filled) == {"patch_size", "vision_feature_select_strategy"}
    assert processor.patch_size == model_config.vision_config.patch_size
    assert processor.num_additional_image_tokens == 0  # SigLIP adds no CLS token


def test_loss_covers_only_the_answer(demo_inputs):
    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"])
    fix_processor(processor, model.config)
    data = llava_dataset(demo_inputs["manifest"], 3)
    rows = [data[0], data[1]]
    batch = collator(processor, model)(rows)
    image_id = model.config.image_token_id
    for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"], strict=True):
        kept = labels[labels != -100]
        # Every image token is in the input, none is a target.
        assert (ids == image_id).sum() == 3 * model.config.image_seq_length
        assert not (kept == image_id).any()
        answer = row["completion"][0]["content"][0]["text"]
        decoded = processor.tokenizer.decode(kept, skip_special_tokens=True)
        assert decoded.strip() == answer
        assert row["prompt"][0]["content"][0]["text"] not in decoded


def test_processor_fix_leaves_a_configured_processor_alone(demo_inputs):
    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model_config = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"]).config
    processor.patch_size, processor.vision_feature_select_strategy = 4, "default"
    assert fix_processor(processor, model_config) == []
    assert (processor.patch_size, processor.vision_feature_select_strategy) == (4, "default")


def collated_padded_batch(demo_inputs, model, processor, multiple=None):
    """Two rows through vtt's collator, the second answer longer: one row carries padding."""
    data = llava_dataset(demo_inputs["manifest"], 2)
    rows = [data[0], data[1]]
    rows[1]["completion"][0]["content"][0]["text"] += " and then it stops in the corner of the frame"
    return collator(processor, model, multiple)(rows)


def test_right_padded_batches_reach_sdpa_without_a_mask_and_give_the_same_logits(demo_inputs, monkeypatch):
    import torch

    from vtt.models.attention import enable_right_padded_sdpa, is_right_padded

    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"]).eval()
    fix_processor(processor, model.config)
    batch = collated_padded_batch(demo_inputs, model, processor)
    mask = batch["attention_mask"].bool()
    assert not mask.all(), "the batch must carry padding for this test to mean anything"
    assert is_right_padded(batch["attention_mask"])  # vtt pads on the right

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        calls.append((query.shape[2], attn_mask is None, is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    text_length = batch["input_ids"].shape[1]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        masked = model(**inputs).logits
        text_calls = [call for call in calls if call[0] == text_length]
        assert text_calls and all(not no_mask for _, no_mask, _ in text_calls)  # stock sdpa: a 4D mask
        calls.clear()
        assert enable_right_padded_sdpa(model)
        causal = model(**inputs).logits
    text_calls = [call for call in calls if call[0] == text_length]
    assert len(text_calls) == model.config.text_config.num_hidden_layers
    assert all(no_mask and is_causal for _, no_mask, is_causal in text_calls)  # flash-eligible
    torch.testing.assert_close(causal[mask], masked[mask], rtol=1e-4, atol=1e-4)


def test_left_padding_and_generation_keep_transformers_mask():
    import torch

    from vtt.models.attention import right_padded_sdpa_mask

    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert right_padded_sdpa_mask(2, 4, 4, attention_mask=left).shape == (2, 1, 4, 4)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert right_padded_sdpa_mask(2, 4, 4, attention_mask=right) is None
    # one new token against a cache of 3: not a whole sequence, transformers decides
    decoding = right_padded_sdpa_mask(2, 1, 4, q_offset=3, attention_mask=left)
    assert decoding is not None and decoding.shape == (2, 1, 1, 4)


def test_frozen_vision_tower_keeps_its_weights_while_the_rest_trains(demo_inputs, tmp_path):
    import torch
    from conftest import tiny_run, train

    out = tmp_path / "run"
    overrides = [*tiny_run(demo_inputs, "llava"), "--freeze_vision_tower", "true", "--max_steps", "3"]
    train("jobs/tiny-llava.yaml", 1, [*overrides, "--output_dir", str(out), "--report_to", "none"])
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    # The run saves in its training precision (bf16): compare the starting weights in the same dtype.
    start = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"]).state_dict()
    before = {name: value.to(after[name].dtype) for name, value in start.items()}
    vision = [name for name in before if ".vision_tower." in name]
    others = [name for name in before if ".vision_tower." not in name]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)
    assert any(not torch.equal(before[name], after[name]) for name in others)


def test_batches_padded_to_a_multiple_keep_right_padding_and_the_same_loss(demo_inputs):
    import torch

    from vtt.models.attention import is_right_padded

    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"]).eval()
    fix_processor(processor, model.config)
    batch = collated_padded_batch(demo_inputs, model, processor)
    length = batch["input_ids"].shape[1]
    multiple = length + 5  # never a multiple already: the collator must add padding
    padded = collated_padded_batch(demo_inputs, model, processor, multiple)
    assert padded["input_ids"].shape[1] == multiple
    assert (padded["input_ids"][:, length:] == processor.tokenizer.pad_token_id).all()
    assert (padded["labels"][:, length:] == -100).all() and not padded["attention_mask"][:, length:].any()
    assert is_right_padded(padded["attention_mask"])  # the flash path still applies
    assert torch.equal(padded["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        assert torch.allclose(model(**padded).loss, model(**batch).loss, atol=1e-5)
