"""The llava trainer's data path: the processor fix and the loss mask."""

from __future__ import annotations

from transformers import AutoModelForImageTextToText, AutoProcessor

from vtt.data import llava_dataset
from vtt.trainers.llava import fix_processor


def test_processor_fix_fills_settings_from_model_config(demo_inputs):
    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model_config = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"]).config
    assert processor.patch_size is None  # as many hub processors ship
    filled = fix_processor(processor, model_config)
    assert set(filled) == {"patch_size", "vision_feature_select_strategy"}
    assert processor.patch_size == model_config.vision_config.patch_size
    assert processor.num_additional_image_tokens == 0  # SigLIP adds no CLS token


def test_loss_covers_only_the_answer(demo_inputs, tmp_path):
    from trl import SFTConfig, SFTTrainer

    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"])
    fix_processor(processor, model.config)
    data = llava_dataset(demo_inputs["manifest"], 3)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    rows = [data[0], data[1]]
    batch = trainer.data_collator(rows)
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
