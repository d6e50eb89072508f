"""Videos + a manifest -> a dataset on disk in a trainer's format (`vtt prepare`, `make prepare`).

    vtt prepare --manifest data/manifest.jsonl --out data/prepared --trainer llava --frames 5 --workers 8 \
        [--model llava-hf/llava-interleave-qwen-7b-hf --max-length 4096]

llava: frames are decoded once, in worker processes, into `<out>.cache/frames` (a re-run decodes only
what is not there), then written with the conversation as prompt / completion / images rows
(`datasets.Image`). seq2seq: source / target rows, no frame decoded. URLs are downloaded once into
`<out>.cache/downloads`. The dataset is built in a hidden folder beside `--out` and renamed into place
when complete. Samples that cannot be used are skipped and listed in `<out>/rejects.jsonl`; the exit
code is 1 when more than --max-reject-ratio of them were.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import multiprocessing
import os
import shutil
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from vtt.data import Reject, Sample, frame_size, llava_example, manifest_entries, seq2seq_source
from vtt.download import DownloadError, DownloadPolicy, fetch, is_url
from vtt.video import Sampling, VideoError, read_frames


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="JSONL or CSV: video, question, answer, ...")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    parser.add_argument("--trainer", choices=["llava", "seq2seq"], required=True)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--frames", type=int, default=5, help="frames sampled uniformly from each clip (default 5)")
    how.add_argument("--fps", type=float, help="frames a second instead of --frames")
    parser.add_argument("--max-frames", type=int, help="cap on the frames of a clip with --fps")
    parser.add_argument("--size", type=int, help="longest side of the frames (default: the --model processor's size)")
    parser.add_argument("--backend", choices=["opencv", "pyav"], default="opencv", help="video decoder")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding processes (default: all CPUs)")
    parser.add_argument("--model", help="model whose processor counts each sample's tokens (llava)")
    parser.add_argument("--max-length", type=int, help="reject samples longer than this many tokens (needs --model)")
    parser.add_argument("--max-reject-ratio", type=float, default=0.05, help="exit 1 above this share of rejects")
    parser.add_argument("--cache", type=Path, help="downloads and decoded frames (default: <out>.cache)")
    parser.add_argument("--retries", type=int, default=5, help="download retries on 429/5xx/connection errors")
    parser.add_argument("--timeout", type=float, default=60.0, help="download timeout in seconds without data")
    parser.add_argument("--max-download-mb", type=float, default=2048.0, help="size cap of one downloaded video")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments {' '.join(extra)}")
    if args.max_length and not args.model:
        raise ValueError("--max-length needs --model: the model's processor counts the tokens of each sample")
    samples, rejects = manifest_entries(args.manifest)
    total = len(samples) + len(rejects)
    out = args.out.resolve()
    if args.trainer == "seq2seq":
        rows = [{"source": seq2seq_source(s), "target": s.answer} for s in samples]
        write_atomically(out, rows, None, rejects)
        return summarize(total, rejects, args.max_reject_ratio, out)
    processor = load_processor(args.model) if args.model else None
    sampling = Sampling(
        num_frames=args.frames,
        fps=args.fps,
        max_frames=args.max_frames,
        size=args.size or (frame_size(processor) if processor else None),
        backend=args.backend,
    )
    cache = (args.cache or out.with_name(out.name + ".cache")).resolve()
    policy = DownloadPolicy(args.retries, timeout=args.timeout, max_bytes=int(args.max_download_mb * 2**20))
    frames, failed = decode_all(samples, sampling, cache, policy, args.workers)
    rejects += failed
    rows, lengths = [], []
    for sample in samples:
        if sample.line not in frames:
            continue
        row = llava_example(sample, [{"bytes": png, "path": None} for png in read_pngs(frames[sample.line])])
        if processor is not None:
            length = sequence_length(processor, row)
            if args.max_length and length > args.max_length:
                reason = (
                    f"{length} tokens ({len(row['images'])} frames + text) is over max_length={args.max_length}; "
                    "fewer --frames or a smaller --size fit, truncating would cut through image tokens"
                )
                rejects.append(Reject(sample.line, sample.video, reason, "over max_length"))
                continue
            lengths.append(length)
        rows.append(row)
    if lengths:
        print_lengths(lengths, args.max_length)
    write_atomically(out, rows, llava_features(), rejects)
    return summarize(total, rejects, args.max_reject_ratio, out)


def frames_key(video: str, sampling: Sampling) -> str:
    """Names a clip's decoded frames: the video (a URL, or a path with its size and mtime) and the sampling."""
    stamp = ""
    if not is_url(video):
        try:
            stat = Path(video).stat()
            stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            stamp = "missing"
    return hashlib.sha256(f"{video}|{stamp}|{sampling!r}".encode()).hexdigest()[:32]


def decode_to_cache(
    video: str, sampling: Sampling, target: Path, downloads: Path, policy: DownloadPolicy
) -> tuple[str, str] | None:
    """Fetch (URLs) and decode one clip into a zip of PNG frames, written whole then renamed.

    Runs in a worker process: each downloads with its own HTTP client (huggingface_hub's is shared
    between the threads of a process and closed by any of them after a connection error).
    Returns (reason, kind) when the clip cannot be used.
    """
    import cv2

    try:
        frames = read_frames(fetch(video, downloads, policy) if is_url(video) else Path(video), sampling)
    except DownloadError as err:
        return f"download failed: {err}", "download failed"
    except VideoError as err:
        return str(err), err.cause
    partial = target.with_name(f"{target.name}.part-{os.getpid()}")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:  # PNG is compressed already
        for i, frame in enumerate(frames):
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            assert ok, "OpenCV failed to encode a decoded frame as PNG"
            archive.writestr(f"{i:05d}.png", png.tobytes())
    partial.rename(target)
    return None


def read_pngs(archive: Path) -> list[bytes]:
    with zipfile.ZipFile(archive) as zipped:
        return [zipped.read(name) for name in sorted(zipped.namelist())]


def decode_all(
    samples: list[Sample], sampling: Sampling, cache: Path, policy: DownloadPolicy, workers: int
) -> tuple[dict[int, Path], list[Reject]]:
    """Decode every clip not in `cache`/frames, in worker processes with a progress bar."""
    from tqdm import tqdm

    (cache / "frames").mkdir(parents=True, exist_ok=True)
    local = {s.line: s for s in samples}
    done, todo, rejects = {}, {}, []
    for sample in samples:
        target = cache / "frames" / f"{frames_key(sample.video, sampling)}.zip"
        (done if target.is_file() else todo)[sample.line] = target
    print(f"vtt prepare: {len(done)} clips already decoded in {cache / 'frames'}, {len(todo)} to decode")
    if todo:
        # spawn: OpenCV's and FFmpeg's threads do not survive fork safely.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
            futures = {
                pool.submit(decode_to_cache, local[line].video, sampling, target, cache / "downloads", policy): line
                for line, target in todo.items()
            }
            for future in tqdm(as_completed(futures), total=len(futures), desc="decoding", unit="clip"):
                line = futures[future]
                error = future.result()
                if error is None:
                    done[line] = todo[line]
                else:
                    rejects.append(Reject(line, local[line].video, *error))
    return done, rejects


def load_processor(model: str):
    """The model's processor, with the settings many hub LLaVA processors lack filled from its config."""
    from transformers import AutoConfig, AutoProcessor

    from vtt.trainers.llava import fix_processor

    processor = AutoProcessor.from_pretrained(model)
    fix_processor(processor, AutoConfig.from_pretrained(model))
    return processor


def sequence_length(processor, row: dict[str, Any]) -> int:
    """Tokens of the whole conversation as the trainer will see it: text plus every frame's image tokens."""
    from PIL import Image

    images = [Image.open(io.BytesIO(image["bytes"])) for image in row["images"]]
    text = processor.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    return int(processor(text=[text], images=[images], return_tensors="np")["input_ids"].shape[-1])


def print_lengths(lengths: list[int], max_length: int | None) -> None:
    values = np.array(lengths)
    quantiles = ", ".join(f"p{q}={int(np.percentile(values, q))}" for q in (50, 90, 99))
    print(
        f"vtt prepare: sequence lengths (tokens) of {len(values)} samples: min={values.min()}, {quantiles}, "
        f"max={values.max()}" + (f"; max_length={max_length}" if max_length else "")
    )


def llava_features():
    from datasets import Features, Image, List, Value

    turn = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
    return Features({"prompt": turn, "completion": turn, "images": List(Image())})


def write_atomically(out: Path, rows: list[dict[str, Any]], features, rejects: list[Reject]) -> None:
    """Write the dataset and rejects.jsonl into a hidden folder beside `out`, then swap it into place."""
    from datasets import Dataset

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir(parents=True)
    final = staging / "dataset"
    if rows:  # through an Arrow cache inside the staging folder, not ~/.cache
        cache = str(staging / "arrow-cache")
        data = Dataset.from_generator(_rows, gen_kwargs={"rows": rows}, features=features, cache_dir=cache)
        data.save_to_disk(str(final))
    else:  # every sample rejected: the folder holds rejects.jsonl only (datasets cannot save 0 nested rows)
        final.mkdir()
    (final / "rejects.jsonl").write_text("".join(r.json() + "\n" for r in sorted(rejects, key=lambda r: r.line)))
    previous = out.with_name(f".{out.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.rename(previous)
    final.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _rows(rows):
    yield from rows


def summarize(total: int, rejects: list[Reject], max_ratio: float, out: Path) -> int:
    """Print what was kept and why the rest was not; 1 when the rejects are over the allowed share."""
    kinds = Counter(r.kind or r.reason for r in rejects)
    ratio = len(rejects) / total if total else 0.0
    print(f"vtt prepare: {total - len(rejects)} of {total} samples written to {out}; {len(rejects)} rejected")
    for kind, count in kinds.most_common():
        print(f"  {count:6d}  {kind}")
    if rejects:
        print(f"  reasons, line by line: {out / 'rejects.jsonl'}")
    if total and len(rejects) == total:
        print("vtt prepare: every sample was rejected, no dataset written: exit 1")
        return 1
    if ratio > max_ratio:
        print(f"vtt prepare: {ratio:.1%} rejected is over --max-reject-ratio {max_ratio:.1%}: exit 1")
        return 1
    return 0
