"""LLaVA-style models (frames as images): the processor settings many hub checkpoints lack.

    python -c "from vtt.models.llava import fix_processor; help(fix_processor)"

Used wherever a LLaVA processor is loaded: the trainer, `vtt prepare` (the frame size) and `vtt predict`.
"""

from __future__ import annotations


def fix_processor(processor, model_config) -> list[str]:
    """Fill the processor settings many hub LLaVA processors lack from the model config; return their names.

    Without them LlavaProcessor cannot count the image tokens per frame and the model raises
    "Image features and image tokens do not match".
    """
    vision = getattr(model_config, "vision_config", None)
    if not hasattr(processor, "patch_size") or processor.patch_size is not None:
        return []  # a processor that knows its patch size was configured as a whole
    wanted = {
        "patch_size": getattr(vision, "patch_size", None),
        "vision_feature_select_strategy": getattr(model_config, "vision_feature_select_strategy", None),
        # CLIP towers add a CLS token; SigLIP has none. (Its default, 0, cannot tell "unset" apart.)
        "num_additional_image_tokens": 0 if getattr(vision, "model_type", "") == "siglip_vision_model" else 1,
    }
    filled = []
    for name, value in wanted.items():
        if value is not None and getattr(processor, name, None) != value:
            setattr(processor, name, value)
            filled.append(name)
    return filled
