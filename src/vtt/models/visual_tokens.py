"""The visual tokens a family's processor gives a clip, known from its frame count and frame size alone.

    from vtt.models.visual_tokens import visual_tokens
    visual_tokens(processor, family, frames=8, height=96, width=128)   # the `<|video_pad|>`s of 8 frames

`height` x `width` is the size the frames reach the processor at, i.e. after vtt's decode resize
(vtt.data.readers.resized maps a video's own size to it; vtt.data.budget.predicted_tokens does all of
it from the container's metadata). The count is the one the processor writes into input_ids: the
family's placeholder token (`placeholder_id`), so a sample over `max_visual_tokens` is known before a
frame is decoded. Per family (formulas in vtt.models.tiny_video's docstring; tests/test_visual_tokens.py
checks each against the processor's real count):

- qwen2_5_vl / qwen2_vl: the video processor's own `get_num_of_video_patches` / merge_size**2. That method
  leaves out the per-frame cap (`cap_pixels_per_frame`) its resize applies, so the capped pixel budget is
  handed to it as its size.
- qwen3_vl: `get_num_of_video_patches` / merge_size**2 (it applies the cap itself).
- llava_onevision: the processor's count of a video's tokens (`_get_num_multimodal_tokens`, in _compat).
- llava_next_video: frames x (crop / patch)**2 // 4, as its processor writes them.
- smolvlm: frames x image_seq_len (each frame one image of max_image_size, never split).
- llava, and any family not above: the processor's own count on a blank clip of that size (cached per
  processor and size): exact by construction, one processor call per distinct size.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from vtt.models import _compat
from vtt.models.families import Family

QWEN2 = ("qwen2_vl", "qwen2_5_vl")
_COUNTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> {(family, frames, h, w): n}


def placeholder_id(processor: Any, family: Family) -> int:
    """The token id the processor repeats once per visual token in input_ids."""
    if family.visual_input == "images" or family.name == "smolvlm":  # SmolVLM writes each frame as <image>s
        return int(processor.image_token_id)
    return int(processor.video_token_id)


def visual_tokens(processor: Any, family: Family, frames: int, height: int, width: int) -> int:
    """The visual tokens `processor` gives a clip of `frames` frames of height x width (see the docstring)."""
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"visual_tokens: a clip of {frames} frames of {height}x{width} has no visual tokens")
    video = getattr(processor, "video_processor", None)
    name = family.name
    if name in QWEN2 and video is not None:
        return _qwen2(video, frames, height, width)
    if name == "qwen3_vl" and video is not None:
        return int(video.get_num_of_video_patches(frames, height, width, {})) // int(video.merge_size) ** 2
    if name == "llava_onevision":
        return _compat.llava_onevision_video_tokens(processor, frames, height, width)
    if name == "llava_next_video" and video is not None and getattr(video, "do_center_crop", False):
        crop = video.crop_size
        per_frame = (int(crop["height"]) // processor.patch_size) * (int(crop["width"]) // processor.patch_size)
        return frames * (per_frame // 4)
    if name == "smolvlm":
        return frames * int(processor.image_seq_len)
    if family.visual_input == "images":  # every frame is one image, counted alike
        return frames * _counted(processor, family, 1, height, width)
    return _counted(processor, family, frames, height, width)


def _qwen2(video: Any, frames: int, height: int, width: int) -> int:
    """Qwen2-VL / Qwen2.5-VL: the patches of the per-frame budget, capped as the video processor's resize caps it."""
    size = dict(video.size)
    if video.cap_pixels_per_frame:
        factor = int(video.patch_size) * int(video.merge_size)
        total = int(video.max_video_tokens * factor * factor * 0.9)
        size["longest_edge"] = max(
            min(size["longest_edge"], total * int(video.temporal_patch_size) // frames),
            int(size["shortest_edge"] * 1.05),
        )
    patches = video.get_num_of_video_patches(frames, height, width, {"size": size})
    return int(patches) // int(video.merge_size) ** 2


def _counted(processor: Any, family: Family, frames: int, height: int, width: int) -> int:
    """The processor's own count for a blank clip: its placeholder tokens in input_ids."""
    cache = _COUNTED.setdefault(processor, {})
    key = (family.name, frames, height, width)
    if key not in cache:
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        if family.visual_input == "images":
            features = processor(text=[processor.image_token * frames], images=[[blank] * frames], return_tensors="pt")
        else:
            from transformers.video_utils import VideoMetadata

            metadata = VideoMetadata(
                total_num_frames=frames, fps=1.0, width=width, height=height, duration=float(frames),
                frames_indices=list(range(frames)),
            )  # fmt: skip
            features = processor(
                text=[processor.video_token], videos=[np.stack([blank] * frames)], return_tensors="pt",
                do_sample_frames=False, video_metadata=[metadata],
            )  # fmt: skip
        cache[key] = int((features["input_ids"] == placeholder_id(processor, family)).sum())
    return cache[key]
