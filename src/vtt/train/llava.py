"""Fine-tune a LLaVA-style model on questions about frames sampled from videos (TRL SFTTrainer).

    deepspeed --num_gpus 4 --module vtt.train.llava --config jobs/llava.yaml [--name value ...]

Each sample is the seed's conversation: the user turn holds the question and one image per sampled
frame, the assistant turn holds the answer; the loss covers the answer only.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor

from vtt import collective
from vtt.data.datasets import frame_size, llava_dataset, pad_to_multiple, skip_rejected
from vtt.data.video import Sampling
from vtt.models.attention import enable_right_padded_sdpa
from vtt.models.llava import fix_processor
from vtt.models.size import freeze_vision_tower
from vtt.train._compat import sft_trainer_without_pad_multiple
from vtt.train.harness import fit, start


@collective.closes_process_groups
def main(argv: list[str] | None = None) -> None:
    from trl import SFTTrainer

    started = start(argv, "llava")
    run, video, training = started.run, started.task, started.training
    processor = AutoProcessor.from_pretrained(run.model_name_or_path)
    model = AutoModelForImageTextToText.from_pretrained(run.model_name_or_path, **started.load_options)
    fix_processor(processor, model.config)
    if video.flash_sdpa:
        enable_right_padded_sdpa(model)
    if video.freeze_vision_tower:
        freeze_vision_tower(model)
    model = started.adapt(model)
    # Frames come out of the decoder at the processor's size: a 4K clip costs a worker 384 px frames.
    sampling = Sampling(
        num_frames=video.num_frames,
        fps=video.fps,
        max_frames=video.max_frames,
        size=frame_size(processor),
        backend=video.video_backend,
    )
    rejects = Path(training.output_dir) / "rejects.jsonl"
    if collective.is_rank0():
        rejects.unlink(missing_ok=True)  # this run's rejects only
    train = llava_dataset(run.dataset, sampling, rejects, video.max_reject_ratio)
    evaluation = None
    if run.eval_dataset:
        evaluation = llava_dataset(run.eval_dataset, sampling, rejects, video.max_reject_ratio)
    with sft_trainer_without_pad_multiple(training) as multiple:  # vtt pads its batches instead
        trainer = SFTTrainer(
            model=model,
            args=training,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=processor,
            callbacks=started.callbacks(),
        )
    # Clips decoded on the fly that fail are dropped from their batch (and were reported when read).
    collate = skip_rejected(trainer.data_collator)
    trainer.data_collator = pad_to_multiple(collate, multiple, processor.tokenizer.pad_token_id)
    data = {"dataset": run.dataset, "train_samples": len(train), "num_frames": video.num_frames}
    fit(trainer, started, data=data, companion=processor, eval_options={"num_frames": video.num_frames})


if __name__ == "__main__":
    main()
