"""Real video files for the video and prepare tests: OpenCV's encoders and imageio-ffmpeg's ffmpeg."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import imageio_ffmpeg

from vtt.synthetic import write_video


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def pattern_clip(path: Path, codec: list[str], seconds: float = 4, rate: int = 25, size: str = "320x240") -> Path:
    """ffmpeg's test pattern (a frame counter, moving colours) encoded with `codec`."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", *codec, str(path))
    return path


H264 = ["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
HEVC = ["-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"]
# 20 frames 0.1 s apart, then 20 frames 0.4 s apart: the times of frame n.
VFR_TIMES = [n * 0.1 if n < 20 else 2 + (n - 20) * 0.4 for n in range(40)]


def vfr(path: Path) -> Path:
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10:duration=4",
        "-vf", "setpts='if(lt(N,20),N*0.1,2+(N-20)*0.4)/TB'", "-fps_mode", "vfr",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path),
    )  # fmt: skip
    return path


def avi_claiming(path: Path, claimed: int, frames: int = 24) -> Path:
    """An MJPG AVI of `frames` frames whose headers (avih, strh) claim `claimed`."""
    write_video(path, "red", "right", frames=frames)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, data.find(b"avih") + 8 + 16, claimed)  # dwTotalFrames
    struct.pack_into("<I", data, data.find(b"strh") + 8 + 32, claimed)  # dwLength
    path.write_bytes(bytes(data))
    return path


def truncated(source: Path, path: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
