"""Each sample's visual tokens, from its container's metadata: known before a frame is decoded.

    info = probe("clip.mp4")                                      # Probe(width, height, fps, duration)
    sampling = sampling_for(processor, family, {"fps": 2, "max_frames": 32})   # as the trainer samples
    predicted_tokens("clip.mp4", sampling, processor, family)     # == the processor's count for that clip
    distribution([...counts...])                                  # n, min, p50, p90, p99, mean, max

The count follows the clip through vtt's pipeline: the frames Sampling takes from the clip's duration
(never more than the clip has; a family that stacks clips repeats them up to num_frames; Qwen-VL in whole
temporal patches), decoded at the processor's size exactly as vtt.data.readers.resize resizes them
(`vtt.data.readers.resized`), then the family's processor count (vtt.models.visual_tokens). `vtt check --data` and
`vtt prepare --model --max-visual-tokens` report it; a sample over budget is rejected, never truncated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vtt.data.download import is_url
from vtt.data.manifest import Sample
from vtt.data.readers import VideoError, resized
from vtt.data.video import Sampling
from vtt.models.families import Family
from vtt.models.visual_tokens import visual_tokens


class Probe(NamedTuple):
    """A video's frame size as displayed (rotation applied), frame rate and length, from its container."""

    width: int
    height: int
    fps: float
    duration: float


def probe(video: str | Path) -> Probe:
    """The container's size, rate and length of `video` (PyAV; no frame decoded); VideoError when it has none.

    Width and height are swapped for a display rotation of 90 or 270 degrees, as both readers turn frames.
    The duration is frame count / rate when the container counts its frames (what the reader trusts), else
    the stream's or the container's duration.
    """
    import av

    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise VideoError(video, "the file has no video stream")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            frames = int(stream.frames or 0)
            if frames > 0 and fps > 0:
                duration = frames / fps
            elif stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / 1e6
            turned = _quarter_turned(video, container, stream)
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(video, f"PyAV cannot read its metadata: {err}") from None
    if width < 1 or height < 1 or not (fps > 0 and math.isfinite(fps)) or not duration > 0:
        raise VideoError(video, f"its container reports no usable size/rate/length ({width}x{height}, {fps} fps)")
    return Probe(height, width, fps, duration) if turned else Probe(width, height, fps, duration)


def _quarter_turned(video, container, stream) -> bool:
    """Whether the display matrix turns the frames by 90 or 270 degrees.

    PyAV 18 has no getter for a stream's display matrix: OpenCV reads it without decoding (the
    orientation it turns its own frames by); when OpenCV cannot open the file, the first frame's
    rotation is read with PyAV (one frame decoded).
    """
    import cv2

    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    try:
        if capture.isOpened():
            return round(capture.get(cv2.CAP_PROP_ORIENTATION_META)) % 180 == 90
    finally:
        capture.release()
    for frame in container.decode(stream):
        try:
            return frame.rotation % 180 == 90
        except (ValueError, OverflowError):
            return False
    return False


def clip_frames(info: Probe, sampling: Sampling, family: Family) -> int:
    """The frames the trainer hands the processor for this clip: Sampling's count over the segment, at
    most the frames the segment has; a family that stacks clips gets num_frames (short clips repeat)."""
    if family.fixed_frames:
        return sampling.num_frames
    start = max(0.0, sampling.start or 0.0)
    end = info.duration if sampling.end is None else min(sampling.end, info.duration)
    if end <= start:
        return 0
    return max(1, min(sampling.count(end - start), round((end - start) * info.fps)))


def predicted_tokens(sample: Sample | str | Path, sampling: Sampling, processor: Any, family: Family) -> int:
    """The visual tokens of `sample`'s clip (a manifest Sample, or a video path) as the processor will count
    them, from its container alone; VideoError when the container cannot say (a URL is not probed)."""
    video = sample.video if isinstance(sample, Sample) else str(sample)
    if is_url(video):
        raise VideoError(video, "a URL: its visual tokens are counted once it is downloaded")
    return tokens_of(probe(video), sampling, processor, family)


def tokens_of(info: Probe, sampling: Sampling, processor: Any, family: Family, frames: int | None = None) -> int:
    """The visual tokens of a probed clip (of `frames` frames instead of Sampling's when given)."""
    frames = clip_frames(info, sampling, family) if frames is None else frames
    if frames < 1:
        raise VideoError("", f"the segment [{sampling.start}, {sampling.end}] s is outside the clip")
    width, height = resized(info.width, info.height, sampling.size)
    return visual_tokens(processor, family, frames, height, width)


def frames_that_fit(info: Probe, sampling: Sampling, processor: Any, family: Family, budget: int) -> int:
    """The most frames (in whole multiples) whose visual tokens fit `budget`; 0 when not even one does."""
    step = max(1, sampling.multiple)
    frames = clip_frames(info, sampling, family)
    while frames >= step and tokens_of(info, sampling, processor, family, frames) > budget:
        frames -= step if frames % step == 0 else frames % step
    return frames if frames >= step else 0


def over_budget_reason(
    tokens: int, frames: int, fit: int | None, max_visual_tokens: int, knob: str, pixels: bool = False
) -> str:
    """Why a sample is left out, and the fix: fewer frames (the most that fit, when known), or (`pixels`: the
    family has a pixel budget) a lower max_pixels."""
    fix = "fewer frames fit" if fit is None else f"at most {fit} frames fit" if fit else "not even one frame fits"
    smaller = " or lower max_pixels" if pixels else ""
    return (
        f"{tokens} visual tokens ({frames} frames) is over max_visual_tokens={max_visual_tokens}; {fix}: "
        f"sample fewer frames ({knob}){smaller}; truncating would cut through its vision tokens"
    )


COUNTED_WITHOUT_CAP = 256


@dataclass
class VisualBudget:
    """The trainer's visual-token budget at dataset load: `check` counts each local clip from its container,
    and says why one over `max_visual_tokens` (None: no cap) is left out; `counts` keeps what it counted
    (vtt-run.json reports their mean and max)."""

    processor: Any
    family: Family
    sampling: Sampling
    max_visual_tokens: int | None = None
    knob: str | None = None  # what the reason tells a user to lower (default: the run config's names)
    pixels: bool | None = None  # whether it suggests a lower max_pixels (default: where the family has one)
    count_all: bool = False  # probe every clip, not only the first COUNTED_WITHOUT_CAP (token-sized batches)
    resample: bool = False  # a clip over the cap keeps the frames that fit instead of being left out
    fitted: dict[int, int] = field(default_factory=dict)  # manifest line -> the frames it is resampled to
    unreadable: list[str] = field(default_factory=list)  # "line N: why" of each container that could not say
    counts: list[int] = field(default_factory=list)
    by_line: dict[int, tuple[int, int]] = field(default_factory=dict)  # manifest line -> (visual tokens, frames)

    def check(self, sample: Sample) -> str | None:
        """Why `sample` is over budget, or None (a URL or an unreadable container is left to the decoder).
        Without a cap only the first COUNTED_WITHOUT_CAP clips are probed: enough for the record, and a large
        manifest does not wait for every container to open. With `resample`, a clip over the cap is kept at
        the most frames that fit (`fitted`), unless its family takes a fixed num_frames."""
        enough = not self.count_all and self.max_visual_tokens is None and len(self.counts) >= COUNTED_WITHOUT_CAP
        if is_url(sample.video) or enough:
            return None
        try:
            info = probe(sample.video)
            tokens = tokens_of(info, self.sampling, self.processor, self.family)
        except VideoError as err:
            self.unreadable.append(f"line {sample.line}: {err}")
            return None  # the decoder reports it, with its cause, when the row is read
        frames = clip_frames(info, self.sampling, self.family)
        fit = None
        if self.max_visual_tokens is not None and tokens > self.max_visual_tokens:
            fit = frames_that_fit(info, self.sampling, self.processor, self.family, self.max_visual_tokens)
            if self.resample and fit and not self.family.fixed_frames:
                self.fitted[sample.line] = fit
                tokens, frames = tokens_of(info, self.sampling, self.processor, self.family, fit), fit
        self.counts.append(tokens)
        self.by_line[sample.line] = (tokens, frames)
        if fit is None or sample.line in self.fitted:
            return None
        knob = self.knob or ("num_frames" if self.sampling.fps is None else "max_frames or fps")
        pixels = has_pixel_budget(self.processor) if self.pixels is None else self.pixels
        return over_budget_reason(tokens, frames, fit, self.max_visual_tokens, knob, pixels)


def has_pixel_budget(processor: Any) -> bool:
    """Whether min_pixels / max_pixels apply (Qwen-VL's video processors), as set_pixel_budget decides."""
    return getattr(getattr(processor, "video_processor", None), "temporal_patch_size", None) is not None


def distribution(counts: list[int] | np.ndarray) -> dict[str, float]:
    """n, min, p50, p90, p99, mean and max of `counts` (all 0 for none)."""
    values = np.asarray(counts, dtype=float)
    if not values.size:
        return dict.fromkeys(("n", "min", "p50", "p90", "p99", "mean", "max"), 0)
    summary = {"n": int(values.size), "min": int(values.min())}
    summary |= {f"p{q}": int(np.percentile(values, q)) for q in (50, 90, 99)}
    return summary | {"mean": round(float(values.mean()), 1), "max": int(values.max())}


def distribution_line(counts: list[int] | np.ndarray, budget: int | None = None) -> str:
    """`visual tokens of 8 samples: min=.., p50=.., p90=.., p99=.., mean=.., max=..[; max_visual_tokens=..]`."""
    summary = distribution(counts)
    stats = ", ".join(f"{key}={value}" for key, value in summary.items() if key != "n")
    return f"visual tokens of {summary['n']} samples: {stats}" + (f"; max_visual_tokens={budget}" if budget else "")
