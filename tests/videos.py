"""Real video files for the video and prepare tests: OpenCV's encoders and imageio-ffmpeg's ffmpeg."""

from __future__ import annotations

import os
import random
import struct
import subprocess
from pathlib import Path

import imageio_ffmpeg

from vtt.data.synthetic import write_video


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


# H.264 for containers without mp4's options: MPEG-TS, and the raw Annex-B stream of a `.h264` file.
H264_STREAM = ["-c:v", "libx264", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p"]


def av1(path: Path, seconds: float = 4) -> Path:
    """ffmpeg's test pattern in AV1 (SVT-AV1 at its fastest preset; SVT_LOG=1 keeps its banner off stderr)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi"]
    command += ["-i", f"testsrc2=size=320x240:rate=25:duration={seconds}"]
    command += ["-c:v", "libsvtav1", "-preset", "12", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, check=True, env={**os.environ, "SVT_LOG": "1"})
    return path


def rotated(source: Path, path: Path, degrees: int) -> Path:
    """`source` with a display matrix turning it `degrees` counter-clockwise (stream copied, pixels untouched)."""
    ffmpeg("-display_rotation", str(degrees), "-i", str(source), "-c", "copy", str(path))
    return path


def ts_cut(source: Path, path: Path, keep_from: float = 0.0, keep_to: float = 1.0) -> Path:
    """The bytes of MPEG-TS `source` from `keep_from` to `keep_to` of its length, cut at 188-byte packets.

    What a partial download or a byte-range split leaves: the stream starts or ends inside a group of
    pictures, so frames whose references were cut off never decode.
    """
    data = source.read_bytes()
    packets = len(data) // 188
    path.write_bytes(data[round(packets * keep_from) * 188 : round(packets * keep_to) * 188])
    return path


def zero_frames(path: Path) -> Path:
    """An MJPG AVI whose video stream has no frames."""
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "0", "-c:v", "mjpeg", str(path))
    return path


def random_bytes(path: Path, size: int = 20_000, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path
