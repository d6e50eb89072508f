"""Frames from videos: uniform sampling with OpenCV.

frames = sample_frames("clip.mp4", num_frames=5)   # list of RGB PIL images
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


class VideoError(Exception):
    """A video that cannot give frames; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


def uniform_indices(frame_count: int, num_frames: int) -> list[int]:
    """`num_frames` indices spread evenly over `frame_count` frames, each the middle of its span."""
    if frame_count < 1:
        raise ValueError(f"frame_count must be at least 1, got {frame_count}")
    spans = np.linspace(0, frame_count, num_frames + 1)
    return sorted({min(int((a + b) / 2), frame_count - 1) for a, b in itertools.pairwise(spans)})


def sample_frames(path: str | Path, num_frames: int = 5) -> list[Image.Image]:
    """`num_frames` RGB frames spread evenly over the clip (fewer only when the clip is shorter)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "no such file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(path, "OpenCV cannot open it (not a video, or a codec it cannot read)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count < 1:
            raise VideoError(path, "the container reports no frames")
        frames = []
        for index in uniform_indices(count, num_frames):
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, bgr = capture.read()
            if ok:
                frames.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    finally:
        capture.release()
    if not frames:
        raise VideoError(path, "no frame could be decoded")
    return frames
