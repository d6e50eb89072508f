"""The two decoders vtt.data.video reads clips with (OpenCV, PyAV), behind one reader interface, and the
errors a clip can give. A reader opens one file and gives frames by index with their presentation times.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

# The frame rate FFmpeg's raw-stream demuxers assume when a stream declares none.
ASSUMED_RATE = 25.0
Size = int | tuple[int, int] | None


class VideoError(Exception):
    """A video that cannot give frames; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


class Unreadable(VideoError):
    """This backend cannot open the file or decode a frame of it: the other backend may."""


class Untrusted(Exception):
    """The container's frame count or rate did not match what decoded: read the clip in full instead."""


def resized(width: int, height: int, size: Size) -> tuple[int, int]:
    """(width, height) of a width x height frame after `resize(frame, size)`."""
    if size is None:
        return width, height
    if isinstance(size, int):  # a cap: a frame smaller than the processor's size is left to the processor
        scale = min(1.0, size / max(height, width))
        return max(1, round(width * scale)), max(1, round(height * scale))
    return int(size[0]), int(size[1])


def resize(rgb: np.ndarray, size: Size) -> np.ndarray:
    """`size` an int: the longest side at most `size`, aspect kept; a (width, height) pair: exactly that."""
    if size is None:
        return rgb
    height, width = rgb.shape[:2]
    target = resized(width, height, size)
    if target == (width, height):
        return rgb
    shrinking = target[0] * target[1] < width * height
    return cv2.resize(rgb, target, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


class OpenCVReader:
    """OpenCV's FFmpeg capture: grab() decodes, retrieve() converts only the frames we keep."""

    def __init__(self, path: Path, untimed_rate: float | None):
        self.path = path
        self.capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self.capture.isOpened():
            raise Unreadable(path, "OpenCV cannot open it (not a video, or a codec it cannot read)")
        self.count = frame_count(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS))
        # OpenCV reports 0 ms for every frame of a stream without timestamps: place them by index.
        self.untimed_rate = untimed_rate
        self.position = 0  # the index of the frame the next grab() decodes

    def seek(self, index: int) -> None:
        self.capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        self.position = index

    def grab(self) -> bool:
        grabbed = self.capture.grab()
        self.position += grabbed
        return grabbed

    def time(self) -> float:
        """Seconds from the stream's start to the frame grabbed last."""
        if self.untimed_rate:
            return (self.position - 1) / self.untimed_rate
        return self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000

    def retrieve(self) -> np.ndarray:
        ok, bgr = self.capture.retrieve()
        if not ok:
            raise Untrusted("a grabbed frame could not be converted")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()


class PyAVReader:
    """PyAV: the same four calls over FFmpeg's own demuxer and decoder."""

    def __init__(self, path: Path, untimed_rate: float | None):
        import av

        self.av = av
        self.path = path
        try:
            self.container = av.open(str(path))
        except (av.error.FFmpegError, UnicodeDecodeError) as err:
            raise Unreadable(path, f"PyAV cannot open it: {err}") from None
        if not self.container.streams.video:
            self.container.close()
            raise Unreadable(path, "the file has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame threads: several frames decode at once
        self.base = self.stream.time_base
        self.offset = self.stream.start_time or 0
        self.count = frame_count(self.stream.frames)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.untimed_rate = untimed_rate  # PyAV's frames of such a stream have no pts
        self.position = 0  # the index of the frame the next grab() gives
        self.frames = None
        self.frame = None
        self.pending = None

    def _next(self):
        if self.frames is None:
            self.frames = self.container.decode(self.stream)
        while True:
            try:
                frame = next(self.frames)
            except (StopIteration, self.av.error.FFmpegError):  # the end, or data that stops decoding (truncated)
                return None
            # A timed stream's frame without a timestamp cannot be placed on the clip's timeline: pass over it.
            if self.untimed_rate or frame.pts is not None:
                return frame

    def seek(self, index: int) -> None:
        target = index / self.fps
        self.container.seek(self.offset + int(target / self.base), stream=self.stream, backward=True)
        self.frames = None
        self.position = index
        # Decode from the keyframe up to the target, so the next grab() gives frame `index` as OpenCV's does.
        while (frame := self._next()) is not None:
            if (frame.pts - self.offset) * self.base >= target - 0.5 / self.fps:
                self.pending = frame
                return
        self.pending = None

    def grab(self) -> bool:
        self.frame, self.pending = (self.pending, None) if self.pending is not None else (self._next(), None)
        self.position += self.frame is not None
        return self.frame is not None

    def time(self) -> float:
        if self.untimed_rate:
            return (self.position - 1) / self.untimed_rate
        return float((self.frame.pts - self.offset) * self.base)

    def retrieve(self) -> np.ndarray:
        return turn_for_display(self.frame.to_ndarray(format="rgb24"), self.frame)

    def close(self) -> None:
        self.container.close()


# frame.rotation (counter-clockwise degrees) -> the cv2.rotate code OpenCV's reader applies for it.
TURNS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, -90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, -180: cv2.ROTATE_180}


def turn_for_display(rgb: np.ndarray, frame) -> np.ndarray:
    """The frame as OpenCV gives it: turned by the display matrix's rotation when that is a multiple of 90."""
    try:
        rotation = frame.rotation
    except (ValueError, OverflowError):  # a degenerate matrix (zero scale) has no angle; OpenCV leaves it as is
        return rgb
    return cv2.rotate(rgb, TURNS[rotation]) if rotation in TURNS else rgb


def frame_count(value) -> int:
    """A container's frame count, 0 when it is missing or absurd (OpenCV reports -1.9e14 for a raw stream)."""
    value = float(value or 0)
    return int(value) if math.isfinite(value) and 0 < value < 2**31 else 0


def rate_without_timestamps(path: Path) -> float | None:
    """None when the video stream has timestamps (or PyAV cannot tell); else the rate to place its frames by.

    A raw elementary stream (`.h264`, `.hevc`) has packets without pts or dts: each backend then reports a
    time of 0 (OpenCV) or None (PyAV) for every frame. Both backends take the rate from here, so they agree.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for n, packet in enumerate(container.demux(stream)):
                if packet.pts is not None or packet.dts is not None:
                    return None
                if n >= 8:
                    break
            rate = stream.average_rate or stream.guessed_rate
            rate = float(rate) if rate else 0.0
            return rate if math.isfinite(rate) and rate > 0 else ASSUMED_RATE
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError, ValueError, OverflowError, ZeroDivisionError):
        return None


def open_reader(path: Path, backend: str, untimed_rate: float | None):
    return (OpenCVReader if backend == "opencv" else PyAVReader)(path, untimed_rate)
