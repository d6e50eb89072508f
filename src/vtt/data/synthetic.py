"""Synthetic videos for the demo and the tests: a shape moving over a plain background.

The colour and the direction of the shape are the answer to the question, so a model that learns
anything learns something checkable. Written with OpenCV's own encoders (mp4v, MJPG, VP9).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from vtt.demo_words import COLOURS, DIRECTIONS, QUESTION

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".webm": "VP90"}


def write_video(
    path: str | Path,
    colour: str,
    direction: str,
    frames: int = 24,
    size: tuple[int, int] = (64, 48),
    fps: float = 12.0,
) -> Path:
    """Write a clip of a square of `colour` moving towards `direction`; the codec follows the suffix."""
    path = Path(path)
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (width, height))
    if not writer.isOpened():  # OpenCV does not raise when it cannot encode
        raise RuntimeError(f"OpenCV cannot write {path.suffix} video to {path}")
    dx, dy = DIRECTIONS[direction]
    side = max(4, min(width, height) // 4)
    for i in range(frames):
        t = i / max(frames - 1, 1)
        cx = int(width / 2 + dx * (t - 0.5) * (width - side))
        cy = int(height / 2 + dy * (t - 0.5) * (height - side))
        frame = np.full((height, width, 3), 40, np.uint8)
        cv2.rectangle(frame, (cx - side // 2, cy - side // 2), (cx + side // 2, cy + side // 2), COLOURS[colour], -1)
        writer.write(frame)
    writer.release()
    return path


def write_demo_videos(folder: str | Path, count: int = 8, suffix: str = ".mp4") -> Path:
    """Write `count` clips and a JSONL manifest (video, question, answer, title, tags); return the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    combos = [(c, d) for c in COLOURS for d in DIRECTIONS]
    lines = []
    for i in range(count):
        colour, direction = combos[(i * 5) % len(combos)]
        name = f"clip{i:03d}{suffix}"
        write_video(folder / name, colour, direction)
        lines.append(
            {
                "id": f"clip{i:03d}",
                "video": name,
                "question": QUESTION,
                "answer": f"a {colour} square moves {direction}",
                "title": f"{colour} square",
                "tags": ["video", "clip"],
            }
        )
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
