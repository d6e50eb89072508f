"""Pushing a trained model to the Hugging Face Hub, only when asked and a token is present."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def push_if_asked(trainer, training, repo_suffix: str | None) -> None:
    """trainer.push_to_hub() when push_to_hub is on and HF_TOKEN is set; never prints the token."""
    if not training.push_to_hub:
        return
    if not os.environ.get("HF_TOKEN"):
        logger.warning("push_to_hub is on but HF_TOKEN is not set: the model stays in %s", training.output_dir)
        return
    if not training.hub_model_id and repo_suffix and os.environ.get("HF_USER_ID"):
        trainer.hub_model_id = f"{os.environ['HF_USER_ID']}/{repo_suffix}"
    trainer.push_to_hub()
