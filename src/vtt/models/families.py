"""The vision-language families vtt trains, and how each takes a clip: as a video through its own video
processor, or as frames passed as images (LLaVA).

    family = family_of(model.config)      # read from the model's config: the run config never names it
    family.visual_input                   # "video" or "images"

One table, read by the trainer (the sampler's frame multiple, the tower to freeze), the collator (video or
images), `vtt predict` and the token counts of `vtt check --data`. A model type that is not in it is
trained as a video family when its processor has a video processor, as LLaVA otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from vtt.models._compat import no_input_grads_into


@dataclass(frozen=True)
class Family:
    """How one model type takes a clip."""

    name: str
    visual_input: Literal["video", "images"]
    # Its model stacks a batch's clips into one tensor (batch, frames, ...): every clip needs the same frame
    # count, so it samples num_frames uniformly and a clip with fewer frames repeats some (as its own loader).
    fixed_frames: bool = False
    # Where its vision encoder sits under `model.model`, and the parts of it that are the projector (they
    # keep training when the tower is frozen: Qwen's merger maps the tower's patches into the LM).
    tower: str = "vision_tower"
    projector_in_tower: tuple[str, ...] = ()


FAMILIES = {
    family.name: family
    for family in (
        Family("llava", "images"),
        Family("qwen2_5_vl", "video", tower="visual", projector_in_tower=("merger",)),
        Family("qwen3_vl", "video", tower="visual", projector_in_tower=("merger", "deepstack_merger_list")),
        Family("llava_onevision", "video", fixed_frames=True),
        Family("llava_next_video", "video", fixed_frames=True),
        Family("smolvlm", "video", tower="vision_model"),
    )
}


def family_of(model_config: Any, processor: Any = None) -> Family:
    """The family of a model, from its config's model_type; an unknown type by what its processor takes."""
    name = getattr(model_config, "model_type", "")
    if name in FAMILIES:
        return FAMILIES[name]
    takes_video = processor is not None and getattr(processor, "video_processor", None) is not None
    return Family(name, "video" if takes_video else "images")


def decode_size(processor: Any, family: Family) -> int | tuple[int, int] | None:
    """The size frames are decoded at, so a 4K clip costs a worker the processor's size: (width, height) or a
    longest side. Qwen-VL resizes each frame to a pixel budget: decoded with a longest side of twice the
    budget's square root, any frame up to 4:1 keeps at least the pixels its processor then resizes to."""
    owner = processor.video_processor if family.visual_input == "video" else processor.image_processor
    size = getattr(owner, "size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"longest_edge": size}
    if size.get("height") and size.get("width"):
        return (int(size["width"]), int(size["height"]))
    if getattr(owner, "temporal_patch_size", None):  # Qwen-VL: shortest_edge / longest_edge count pixels
        return int(2 * math.sqrt(size["longest_edge"])) if size.get("longest_edge") else None
    return int(size["longest_edge"]) if size.get("longest_edge") else None


def set_pixel_budget(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Set a Qwen-VL video processor's per-frame pixel budget (its size {"shortest_edge", "longest_edge"}
    are pixel counts); a family with a fixed frame size has none, and refuses one."""
    if min_pixels is None and max_pixels is None:
        return
    video = getattr(processor, "video_processor", None)
    size = dict(getattr(video, "size", None) or {})
    if video is None or getattr(video, "temporal_patch_size", None) is None:
        raise ValueError(
            f"min_pixels/max_pixels: {type(processor).__name__} resizes every frame to one size; "
            "leave them unset for this model (its frame size is in docs/models.md)"
        )
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    video.size = size


def frame_multiple(processor: Any) -> int:
    """Frames a temporal patch holds (Qwen-VL: 2): clips are sampled in whole patches."""
    return int(getattr(getattr(processor, "video_processor", None), "temporal_patch_size", None) or 1)


def freeze_vision_tower(model: Any, family: Family) -> None:
    """Keep the vision encoder as loaded (out of the optimizer, no backward through it); its projector trains."""
    tower = getattr(getattr(model, "model", None), family.tower, None)
    if tower is None:
        raise ValueError(
            f"freeze_vision_tower: {type(model).__name__} has no model.{family.tower}; set freeze_vision_tower: false"
        )
    tower.requires_grad_(False)
    no_input_grads_into(tower, family.projector_in_tower)
    for name in family.projector_in_tower:
        getattr(tower, name).requires_grad_(True)
