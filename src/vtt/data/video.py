"""Frames from videos: `uniform` N frames or `fps` frames a second, resized for the model.

    frames = sample_frames("clip.mp4", num_frames=5)                         # 5 RGB PIL images
    frames = sample_frames("clip.mp4", fps=2, max_frames=32, start=3.0, end=9.5, size=384, backend="pyav")

Sampling is defined on presentation time, so both backends (OpenCV, the default, and PyAV) pick the
same frames: the segment [start, end] is cut into n equal spans and each span gives the frame on
screen at its middle. `uniform` takes n = num_frames; `fps` takes n = duration x fps, capped at
max_frames (the rate drops so the frames still cover the whole segment). A clip shorter than n
frames gives each of its frames once: never zero, never a duplicate. Where two middles fall on one
frame (a gap in the decoded frames, a variable rate) the repeat moves to the next frame, so a clip
with n frames in the segment gives n.

The fast path trusts the container's frame count and rate, reads the picked frames in order (decoding
forward over short gaps, seeking over long ones), and checks each frame's timestamp against the one
the rate predicts. A container that lies (a frame count larger than what decodes, a truncated file,
a variable frame rate) fails that check, and the clip is then read from start to end to learn every
frame's time: slower, but right. Only the picked frames are converted and resized, one at a time, so
a 4K clip never sits in memory whole.

The clip starts at its first decodable frame (a stream cut between keyframes begins with frames no
decoder can show). A stream without timestamps (a raw `.h264` / `.hevc` elementary stream) places
frame n at n / its frame rate (25 when it declares none), and is always counted by decoding. PyAV's
frames are turned by the stream's display matrix, as OpenCV turns them (multiples of 90 degrees;
a mirroring in the matrix is ignored by both). When the chosen backend cannot open or decode a clip
(OpenCV has no AV1 decoder), the other one is tried; any failure, whatever its exception, reaches the
caller as one VideoError naming the file and the cause of each backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vtt.data.readers import (
    Size,
    Unreadable,
    Untrusted,
    VideoError,
    open_reader,
    rate_without_timestamps,
    resize,
)

BACKENDS = ("opencv", "pyav")
# Decode forward instead of seeking when the next picked frame is at most this many frames ahead: a
# seek lands on the keyframe before the target and decodes up to it anyway, so over short gaps it only
# adds the demuxer's seek. Measured in bench/decode.py (bench/RESULTS.md).
FORWARD_GAP = 48


@dataclass(frozen=True)
class Clip:
    """The sampled frames of one clip with their presentation times, and the clip's own frame rate and length.

    `rate` and `duration` are what a video processor's metadata needs (Qwen3-VL writes each frame's time
    in the prompt, Qwen2.5-VL spaces its temporal patches by the sampled rate): the container's when it
    was trusted, else measured from the decoded frames.
    """

    frames: list[np.ndarray]
    times: list[float]
    rate: float
    duration: float

    def timing(self) -> dict[str, Any]:
        """Everything but the frames: the `clip` column of a dataset row, the video processor's metadata."""
        return {"times": self.times, "rate": self.rate, "duration": self.duration}


@dataclass(frozen=True)
class Sampling:
    """How frames are taken from a clip; `sample_frames` takes the same names as keywords."""

    num_frames: int = 5
    fps: float | None = None
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None
    size: Size = None
    backend: Literal["opencv", "pyav"] = "opencv"
    # The frame count is rounded down to a multiple of this (at least one multiple): Qwen-VL models merge
    # pairs of frames into one temporal patch, and an odd count would make the processor repeat the last frame.
    multiple: int = 1

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"video backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.fps is None and self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.multiple < 1:
            raise ValueError(f"the frame multiple must be at least 1, got {self.multiple}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"segment end {self.end} must be after its start {self.start}")

    def count(self, duration: float) -> int:
        """Frames wanted from a segment of `duration` seconds."""
        if self.fps is None:
            return self.rounded(self.num_frames)
        wanted = max(1, round(duration * self.fps))
        return self.rounded(min(wanted, self.max_frames) if self.max_frames else wanted)

    def rounded(self, count: int) -> int:
        return max(self.multiple, count - count % self.multiple)


def span_middles(start: float, end: float, count: int) -> list[float]:
    """The middle time of each of `count` equal spans of [start, end)."""
    step = (end - start) / count
    return [start + (k + 0.5) * step for k in range(count)]


def _read_trusting_metadata(reader, sampling: Sampling) -> Clip:
    """Picked frames located by the container's count and rate; Untrusted when the clip disagrees."""
    count, fps = reader.count, reader.fps
    if reader.untimed_rate:
        raise Untrusted("the stream has no timestamps to check the picks against")
    if count < 1 or not fps or fps <= 0 or not math.isfinite(fps):
        raise Untrusted("the container reports no frame count or rate")
    if sampling.start is not None and sampling.start >= count / fps:
        raise Untrusted("the segment starts after the reported end")  # a count can understate: decode to know
    start, end = _segment(reader.path, sampling, count / fps)
    times = span_middles(start, end, sampling.count(end - start))
    indices = sorted({min(count - 1, int(t * fps + 1e-6)) for t in times})
    frames, position = [], 0  # position: the index the next grab() decodes
    for index in indices:
        if index - position > FORWARD_GAP:
            reader.seek(index)
            position = index
        while position <= index:
            if not reader.grab():
                raise Untrusted(f"the container reports {count} frames, decoding stopped at {position}")
            position += 1
        if abs(reader.time() - index / fps) > 0.5 / fps:
            raise Untrusted(f"frame {index} shows at {reader.time():.3f}s, not {index / fps:.3f}s")
        frames.append((reader.time(), resize(reader.retrieve(), sampling.size)))
    _check_ends_where_reported(reader.path, count, fps)
    return _clip(frames, fps, count / fps)


def _clip(timed: list[tuple[float, np.ndarray]], rate: float, duration: float) -> Clip:
    return Clip([frame for _, frame in timed], [time for time, _ in timed], rate, duration)


def _check_ends_where_reported(path: Path, count: int, fps: float) -> None:
    """Untrusted when the stream has packets past the reported count: the picks would miss the clip's end.

    Demuxes (no decoding) from a second before the reported end, so it costs about a millisecond;
    PyAV reads the packets for either backend. A file PyAV cannot demux gives no evidence either way.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            offset, base = stream.start_time or 0, stream.time_base
            last = (count - 1) / fps  # the reported last frame's time
            container.seek(offset + int(max(0.0, last - 1.0) / base), stream=stream, backward=True)
            for packet in container.demux(stream):
                if packet.pts is not None and (packet.pts - offset) * base > last + 0.5 / fps:
                    raise Untrusted(f"the container reports {count} frames, but its stream goes on past them")
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError):
        return


def _frame_times(path: Path, backend: str, untimed_rate: float | None) -> list[float]:
    """Every decodable frame's time, by decoding the clip from start to end."""
    reader = open_reader(path, backend, untimed_rate)
    try:
        times = []
        while reader.grab():
            times.append(reader.time())
        return times
    finally:
        reader.close()


def _read_counting(path: Path, sampling: Sampling, untimed_rate: float | None) -> Clip:
    """Picked frames located by decoding: the clip's times are learnt first, then the picks are read."""
    times = _frame_times(path, sampling.backend, untimed_rate)
    if not times:
        raise Unreadable(path, "no frame could be decoded")
    if len(times) > 1 and times[-1] <= times[0]:
        raise Unreadable(path, f"its {len(times)} frames all show at {times[0]:.3f} s (timestamps do not advance)")
    # The last frame lasts as long as the mean frame before it (1 s for a 1-frame clip of unknown rate).
    last = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0
    # The clip starts at its first decodable frame: frames cut off from their keyframe never decode, and a
    # segment from 0 would put several picks before the first frame, where they all fall on it.
    start, end = _segment(path, sampling, times[-1] + last, first=times[0])
    wanted = span_middles(start, end, sampling.count(end - start))
    on_screen = [max(0, int(np.searchsorted(times, t + 1e-6, side="right")) - 1) for t in wanted]
    # The frames inside the segment: from the one on screen at its start to the last before its end.
    first_inside = max(0, int(np.searchsorted(times, start + 1e-6, side="right")) - 1)
    last_inside = max(first_inside, int(np.searchsorted(times, end, side="left")) - 1)
    picks = _distinct(on_screen, first_inside, last_inside)
    chosen = set(picks)
    reader = open_reader(path, sampling.backend, untimed_rate)
    frames = []
    try:
        for index in range(picks[-1] + 1):
            if not reader.grab():
                break
            if index in chosen:
                frames.append((reader.time(), resize(reader.retrieve(), sampling.size)))
    finally:
        reader.close()
    if not frames:
        raise Unreadable(path, "no frame could be decoded")
    return _clip(frames, 1 / last, times[-1] + last)


def _distinct(picks: list[int], lo: int, hi: int) -> list[int]:
    """`picks` (ascending) made distinct within frames lo..hi, or every one of lo..hi when they are fewer.

    A gap in the frames (the frames before a lost reference never decode: a stream cut inside a group of
    pictures; or a variable rate) can put two span middles on one frame; the repeat moves to the next
    frame, and picks pushed past `hi` move back, so n frames are asked and n come back when the clip has them.
    """
    if hi - lo + 1 <= len(picks):
        return list(range(lo, hi + 1))
    moved = []
    for pick in picks:
        moved.append(max(pick, moved[-1] + 1) if moved else pick)
    for k in reversed(range(len(moved))):
        moved[k] = min(moved[k], hi if k == len(moved) - 1 else moved[k + 1] - 1)
    return moved


def _segment(path: Path, sampling: Sampling, duration: float, first: float = 0.0) -> tuple[float, float]:
    """[start, end] of the clip to sample: the asked segment within the clip's frames, from `first` to `duration`."""
    start = max(first, sampling.start or 0.0)
    end = duration if sampling.end is None else min(sampling.end, duration)
    if start >= end:
        segment = f"[{sampling.start or 0}, {'the end' if sampling.end is None else sampling.end}] s"
        clip = f"{duration:.2f} s long" if first <= 0 else f"frames from {first:.2f} s to {duration:.2f} s"
        raise VideoError(path, f"the segment {segment} is outside the clip ({clip})")
    return start, end


def _read_with(path: Path, sampling: Sampling) -> Clip:
    """The picks by `sampling.backend`; Unreadable for any failure of the backend on this file."""
    try:
        untimed_rate = rate_without_timestamps(path)
        reader = open_reader(path, sampling.backend, untimed_rate)
        try:
            return _read_trusting_metadata(reader, sampling)
        except Untrusted:
            pass
        finally:
            reader.close()
        return _read_counting(path, sampling, untimed_rate)
    except VideoError:
        raise
    except Untrusted as err:  # a frame that decoded but would not convert, in the counting pass
        raise Unreadable(path, str(err)) from None
    except Exception as err:  # cv2.error, av's errors, MemoryError...: the data pipeline catches VideoError only
        raise Unreadable(path, f"{sampling.backend} failed with {type(err).__name__}: {err}") from err


def read_timed_frames(path: str | Path, sampling: Sampling) -> list[tuple[float, np.ndarray]]:
    """(seconds, frame) pairs: each sampled frame's presentation time and its RGB uint8 array."""
    clip = read_clip(path, sampling)
    return list(zip(clip.times, clip.frames, strict=True))


def read_clip(path: str | Path, sampling: Sampling) -> Clip:
    """The sampled frames of `path` (RGB uint8 arrays, never none) with their times, the clip's rate and length."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "no such file")
    if path.stat().st_size == 0:
        raise VideoError(path, "the file is empty (0 bytes)")
    try:
        return _read_with(path, sampling)
    except Unreadable as failed:
        other = replace(sampling, backend=BACKENDS[1 - BACKENDS.index(sampling.backend)])
        try:
            return _read_with(path, other)  # the same picks: both backends sample alike
        except Unreadable as also:
            causes = f"{sampling.backend}: {failed.cause}; {other.backend}, tried next: {also.cause}"
            raise VideoError(path, f"neither backend can read it ({causes})") from None


def read_frames(path: str | Path, sampling: Sampling) -> list[np.ndarray]:
    """The sampled frames of `path` as RGB uint8 arrays (height x width x 3), never an empty list."""
    return read_clip(path, sampling).frames


def sample_frames(
    path: str | Path,
    num_frames: int = 5,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    size: Size = None,
    backend: Literal["opencv", "pyav"] = "opencv",
    as_array: bool = False,
) -> list[Image.Image] | list[np.ndarray]:
    """Frames of `path` as RGB PIL images (or arrays); see the module docstring for how they are picked."""
    sampling = Sampling(num_frames, fps, max_frames, start, end, size, backend)
    frames = read_frames(path, sampling)
    return frames if as_array else [Image.fromarray(frame) for frame in frames]
