"""What both trainers do once their Trainer is built: train (resuming), stop cleanly, save, evaluate, push.

    fit(trainer, run, training, stopper=stopper, guard=guard, push=push, data=data, companion=processor,
        eval_options={"num_frames": 8})

Below the trainers, as video/data/config are: each trainer still builds its own model, data and Trainer.
"""

from __future__ import annotations

from typing import Any

from vtt import checkpoints, hub


def fit(
    trainer: Any,
    run: Any,
    training: Any,
    *,
    stopper: Any,
    guard: Any,
    push: Any,
    data: dict[str, Any],
    companion: Any,
    eval_options: dict[str, Any],
) -> None:
    """Train `trainer` to the end and publish the result.

    companion: what rank 0 saves beside the model with `save_pretrained` (a processor, a generation config);
    data: the dataset facts for the model card; eval_options: extra arguments of `evaluate_model`.
    A signal or a full disk ends the process here with its exit code, after its checkpoint.
    """
    checkpoints.atomic_saves(trainer)
    result = trainer.train(resume_from_checkpoint=checkpoints.resume_point(run, training))
    guard.exit_if_stopped()
    stopper.exit_if_stopped()
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        companion.save_pretrained(training.output_dir)
    if trainer.eval_dataset is not None:
        data = dict(data, eval_dataset=run.eval_dataset, eval_samples=len(trainer.eval_dataset))
    if run.eval_dataset and run.generate_eval and trainer.is_world_process_zero():
        # Imported here: vtt.evaluate comes after the trainers (it loads back the model they saved).
        from vtt.evaluate import evaluate_model

        evaluate_model(
            training.output_dir,
            run.eval_dataset,
            batch_size=training.per_device_eval_batch_size,
            device="cpu" if training.use_cpu else None,
            **eval_options,
        )
    hub.push_model(push, training.output_dir, data, hub.final_metrics(trainer.state.log_history, result.metrics))
