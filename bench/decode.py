"""Sampled frames per second: vtt's sampler against plain OpenCV, PyAV (and torchcodec when it loads).

    PYTHONPATH=src python bench/decode.py [--repeats 5] [--seconds 10]

Two H.264 clips (480p, 1080p; 30 fps, x264 defaults) are made with imageio-ffmpeg's ffmpeg. Two cases:
`uniform8` (8 frames, the middles of 8 equal spans) and `fps2` (2 frames a second). Every method returns
the same frames (indices checked against vtt's) as full-size RGB arrays; each is timed `--repeats`
times and the median is printed as frames per second, as a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import av
import cv2
import imageio_ffmpeg

from vtt.data.video import Sampling, read_frames, span_middles


def make_clip(path: Path, size: str, seconds: int) -> Path:
    source = f"testsrc2=size={size}:rate=30:duration={seconds}"
    command = ["-f", "lavfi", "-i", source, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *command], check=True)
    return path


def picks(count: int, fps: float, case: str) -> list[int]:
    n = 8 if case == "uniform8" else max(1, round(count / fps * 2))
    return sorted({min(count - 1, int(t * fps + 1e-6)) for t in span_middles(0, count / fps, n)})


def opencv_seek(path, indices):
    capture, frames = cv2.VideoCapture(str(path)), []
    for index in indices:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        _, bgr = capture.read()
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def opencv_sequential(path, indices):
    capture, frames, wanted = cv2.VideoCapture(str(path)), [], set(indices)
    for index in range(indices[-1] + 1):
        capture.grab()
        if index in wanted:
            frames.append(cv2.cvtColor(capture.retrieve()[1], cv2.COLOR_BGR2RGB))
    return frames


def pyav_sequential(path, indices):
    wanted, frames = set(indices), []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if index >= indices[-1]:
                break
    return frames


def pyav_seek(path, indices):
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, base, start = float(stream.average_rate), stream.time_base, stream.start_time or 0
        for index in indices:
            container.seek(start + int(index / rate / base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if (frame.pts - start) * base >= (index - 0.5) / rate:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    break
    return frames


def torchcodec_method():
    """torchcodec's batch getter, or the reason it cannot run here."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as err:  # an ImportError or the OSError of a shared library it cannot load
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"

    def run(path, indices):
        batch = VideoDecoder(str(path), seek_mode="exact").get_frames_at(indices)
        return [frame.permute(1, 2, 0).numpy() for frame in batch.data]

    return run, None


def vtt_method(backend: str):
    def run(path, case):
        sampling = Sampling(num_frames=8, backend=backend) if case == "uniform8" else Sampling(fps=2, backend=backend)
        return read_frames(path, sampling)

    return run


def median_rates(calls: dict[str, object], frames: int, repeats: int) -> dict[str, float]:
    """Frames per second of each call, median of `repeats`; the calls take turns within each repeat so
    that load from other users of the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            begin = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - begin)
    return {name: frames / statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    torchcodec, why_not = torchcodec_method()
    methods = {
        "OpenCV seek": opencv_seek,
        "OpenCV sequential": opencv_sequential,
        "PyAV seek": pyav_seek,
        "PyAV sequential": pyav_sequential,
    }
    if torchcodec:
        methods["torchcodec"] = torchcodec
    with tempfile.TemporaryDirectory() as folder:
        clips = {
            "480p": make_clip(Path(folder) / "480p.mp4", "854x480", args.seconds),
            "1080p": make_clip(Path(folder) / "1080p.mp4", "1920x1080", args.seconds),
        }
        print(f"| clip | case | frames | {' | '.join(['vtt (opencv, default)', 'vtt (pyav)', *methods])} |")
        print("|---" * (3 + 2 + len(methods)) + "|")
        for name, clip in clips.items():
            count = int(cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT))
            for case in ("uniform8", "fps2"):
                indices = picks(count, 30.0, case)
                reference = vtt_method("opencv")(clip, case)
                calls = {f"vtt {b}": partial(vtt_method(b), clip, case) for b in ("opencv", "pyav")}
                for label, method in methods.items():
                    frames = method(clip, indices)
                    assert len(frames) == len(reference) and frames[0].shape == reference[0].shape
                    calls[label] = partial(method, clip, indices)
                rates = median_rates(calls, len(indices), args.repeats)
                cells = [f"{rate:.1f}" for rate in rates.values()]
                print(f"| {name} | {case} | {len(indices)} | {' | '.join(cells)} |")
    if why_not:
        print(f"\ntorchcodec not run: {why_not}")


if __name__ == "__main__":
    main()
