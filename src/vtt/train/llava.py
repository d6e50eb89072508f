"""Fine-tune a vision-language model on questions about video clips (TRL SFTTrainer), any family.

    deepspeed --num_gpus 4 --module vtt.train.llava --config jobs/llava.yaml [--name value ...]

The family is read from the model's config (vtt.models.families): Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision,
LLaVA-NeXT-Video and SmolVLM2 get each clip as a video through their own video processor; LLaVA gets its
frames as images. vtt decodes each clip once (vtt.data.video) and vtt.data.collate builds the inputs:
the user turn holds the question and the clip, the assistant turn the answer; the loss covers the answer only.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor

from vtt import collective
from vtt.data.batches import by_tokens
from vtt.data.budget import VisualBudget, distribution
from vtt.data.collate import VisionCollator, sampling_for
from vtt.data.datasets import llava_dataset
from vtt.models.attention import enable_right_padded_sdpa, enable_varlen_attention
from vtt.models.families import family_of, freeze_vision_tower, set_pixel_budget
from vtt.models.llava import fix_processor
from vtt.models.packing import enable_packed_positions
from vtt.train.harness import fit, start


@collective.closes_process_groups
def main(argv: list[str] | None = None) -> None:
    from trl import SFTTrainer

    started = start(argv, "llava")
    run, video, training = started.run, started.task, started.training
    processor = AutoProcessor.from_pretrained(run.model_name_or_path)
    model = AutoModelForImageTextToText.from_pretrained(run.model_name_or_path, **started.load_options)
    family = family_of(model.config, processor)
    fix_processor(processor, model.config)
    set_pixel_budget(processor, video.min_pixels, video.max_pixels)
    # Padding-free batches are vtt's collator's (TRL refuses them for vision rows and custom collators).
    padding_free, training.padding_free = training.padding_free, False
    if padding_free:
        enable_packed_positions(model)
        enable_varlen_attention(model)
    elif video.flash_sdpa:
        enable_right_padded_sdpa(model)
    if video.freeze_vision_tower:
        freeze_vision_tower(model, family)
    model = started.adapt(model)
    sampling = sampling_for(processor, family, vars(video))
    rejects = Path(training.output_dir) / "rejects.jsonl"
    if collective.is_rank0():
        rejects.unlink(missing_ok=True)  # this run's rejects only
    fixed = family.fixed_frames
    sized = video.max_tokens_per_batch  # micro batches sized by tokens: every clip's count is needed
    budget = VisualBudget(
        processor, family, sampling, video.max_visual_tokens, count_all=bool(sized), resample=video.fit_visual_tokens
    )
    train = llava_dataset(run.dataset, sampling, rejects, video.max_reject_ratio, fixed, budget)
    groups = None
    if sized:
        train, groups = by_tokens(train, budget, processor, family, sized, training.seed)
        # A micro batch is one group; gradient_accumulation_steps stay what global_batch_size gave.
        training.per_device_train_batch_size = 1
    evaluation = None
    if run.eval_dataset:
        evaluation = llava_dataset(run.eval_dataset, sampling, rejects, video.max_reject_ratio, fixed)
    visual_tokens = distribution(budget.counts)  # of the training clips, from their containers
    trainer = SFTTrainer(
        model=model,
        args=training,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        data_collator=VisionCollator(
            processor, family, training.pad_to_multiple_of, training.max_length, padding_free=padding_free
        ),
        callbacks=started.callbacks(
            family=family.name,
            visual_input=family.visual_input,
            padding_free=padding_free,
            token_groups=groups,
            visual_tokens_per_sample={key: visual_tokens[key] for key in ("n", "mean", "max")},
        ),
    )
    data = {
        "dataset": run.dataset,
        "train_samples": len(train),
        "num_frames": video.num_frames,
        "family": family.name,
        "visual_input": family.visual_input,
    }
    fit(trainer, started, data=data, companion=processor, eval_options={})  # predict samples as recorded


if __name__ == "__main__":
    main()
