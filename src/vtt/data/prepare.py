"""Videos + a manifest -> a dataset on disk in a trainer's format (`vtt prepare`, `make prepare`).

    vtt prepare --manifest data/manifest.jsonl --out data/prepared --trainer llava --frames 5 --workers 8 \
        [--model llava-hf/llava-interleave-qwen-7b-hf --max-length 4096 --max-visual-tokens 3000]

llava: frames are decoded once, in worker processes, into `<out>.cache/frames` (a re-run decodes only
what is not there), then written with the conversation as prompt / completion / images rows
(`datasets.Image`). seq2seq: source / target rows, no frame decoded. URLs are downloaded once into
`<out>.cache/downloads`. The dataset is built in a hidden folder beside `--out` and renamed into place
when complete (vtt.outputs: --out may not hold the manifest or its videos, may only replace an earlier
`vtt prepare` output, and takes one writer at a time). With --model, each sample's visual tokens are
predicted from its container before decoding (vtt.data.budget): one over --max-visual-tokens is rejected
with the frames that would fit, never decoded, never truncated. Samples that cannot be used are skipped and listed
in `<out>/rejects.jsonl`; the exit code is 1 when more than --max-reject-ratio of them were. When none can
be used no dataset is written: the rejects go to `<out>.rejects.jsonl` and `--out` is left as it was
(exit 1). A full disk stops with exit 28 (ENOSPC), `--out` left as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from vtt.data.budget import VisualBudget, distribution_line, over_budget_reason
from vtt.data.collate import VisionCollator, sampling_for
from vtt.data.datasets import Reject, Sample, llava_example, manifest_entries, own_id, repeated_to, seq2seq_source
from vtt.data.download import DownloadError, DownloadPolicy, fetch, is_url, partial_path, remove_stale_partials
from vtt.data.manifest import local_videos
from vtt.data.video import Clip, Sampling, VideoError, read_clip
from vtt.exits import Exit
from vtt.models.families import family_of
from vtt.models.visual_tokens import placeholder_id
from vtt.outputs import Claim, NoSpace, claim_output, space_checked


def count(minimum: int):
    """An argparse type: a whole number of at least `minimum` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give {minimum} or more") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {minimum} or more")
        return value

    return parse


def number(low: float, high: float = math.inf, *, above: bool = False):
    """An argparse type: a finite number from `low` (excluded with above=True) to `high`."""
    bounds = f"{'above' if above else 'at least'} {low:g}" + (f" and at most {high:g}" if high < math.inf else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a number {bounds}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a finite number {bounds}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="JSONL or CSV: video, question, answer, ...")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    parser.add_argument("--trainer", choices=["llava", "seq2seq"], required=True)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--frames", type=count(1), default=5, help="frames sampled uniformly from each clip (default 5)")
    how.add_argument("--fps", type=number(0, above=True), help="frames a second instead of --frames")
    parser.add_argument("--max-frames", type=count(1), help="cap on the frames of a clip with --fps")
    parser.add_argument(
        "--size", type=count(1), help="longest side of the frames (default: the --model processor's size)"
    )
    parser.add_argument("--backend", choices=["opencv", "pyav"], default="opencv", help="video decoder")
    parser.add_argument(
        "--workers", type=count(1), default=os.cpu_count(), help="decoding processes (default: all CPUs)"
    )
    parser.add_argument("--model", help="model whose processor counts each sample's tokens (llava)")
    parser.add_argument(
        "--max-length", type=count(1), help="reject samples longer than this many tokens (needs --model)"
    )
    parser.add_argument(
        "--max-visual-tokens",
        type=count(1),
        help="reject samples whose clip gives more visual tokens than this, before decoding (needs --model)",
    )
    parser.add_argument(
        "--max-reject-ratio", type=number(0, 1), default=0.05, help="exit 1 above this share of rejects (0 to 1)"
    )
    parser.add_argument("--cache", type=Path, help="downloads and decoded frames (default: <out>.cache)")
    parser.add_argument("--retries", type=count(0), default=5, help="download retries on 429/5xx/connection errors")
    parser.add_argument(
        "--timeout", type=number(0, above=True), default=60.0, help="download timeout in seconds without data"
    )
    parser.add_argument(
        "--max-download-mb", type=number(0, above=True), default=2048.0, help="size cap of one downloaded video"
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments {' '.join(extra)}")
    for option, value in (("--max-length", args.max_length), ("--max-visual-tokens", args.max_visual_tokens)):
        if value and not args.model:
            raise ValueError(f"{option} needs --model: the model's processor counts the tokens of each sample")
    samples, rejects = manifest_entries(args.manifest)
    total = len(samples) + len(rejects)
    out = args.out.resolve()
    cache = (args.cache or out.with_name(out.name + ".cache")).resolve()
    # What replacing --out must not delete: the manifest, its videos (rejected lines' too) and the frame cache.
    inputs = [args.manifest, *local_videos(args.manifest, samples, rejects)]
    if args.trainer == "llava":
        inputs.append(cache)
    with claim_output(out, "prepare", inputs) as claim:
        try:
            if args.trainer == "seq2seq":
                rows = [{"source": seq2seq_source(s), "target": s.answer} for s in samples]
                written = write_dataset(claim, rows, None, rejects)
            else:
                rows, rejects = llava_rows(args, samples, rejects, cache)
                written = write_dataset(claim, rows, llava_features(), rejects)
        except NoSpace as err:
            left = f"{out} is left as it was" if out.exists() else f"nothing was written to {out}"
            print(f"vtt prepare: error: {err}; {left}", file=sys.stderr)
            return Exit.DISK_FULL
    return summarize(total, rejects, args.max_reject_ratio, out, written)


def llava_rows(
    args: argparse.Namespace, samples: list[Sample], rejects: list[Reject], cache: Path
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Decode (into the cache) and build the llava rows; returns them and every reject so far."""
    processor = load_processor(args.model) if args.model else None
    family = family_of(model_config(args.model), processor) if processor else None
    settings = dict(num_frames=args.frames, fps=args.fps, max_frames=args.max_frames, video_backend=args.backend)
    if processor is None:
        sampling = Sampling(
            num_frames=args.frames, fps=args.fps, max_frames=args.max_frames, size=args.size, backend=args.backend
        )
    else:  # as the trainer samples for this model (its frame size, Qwen-VL's whole temporal patches, ...)
        sampling = sampling_for(processor, family, settings)
        sampling = dataclasses.replace(sampling, size=args.size) if args.size else sampling
    budget = getattr(args, "max_visual_tokens", None)
    if budget:
        samples, over = within_budget(samples, sampling, processor, family, budget)
        rejects = rejects + over
    policy = DownloadPolicy(args.retries, timeout=args.timeout, max_bytes=int(args.max_download_mb * 2**20))
    with space_checked(cache):
        frames, failed = decode_all(samples, sampling, cache, policy, args.workers)
    rejects = rejects + failed
    rows, lengths, visual = [], [], []
    for sample in samples:
        if sample.line not in frames:
            continue
        pngs, timing = read_decoded(frames[sample.line])
        if family is not None and family.fixed_frames:  # a family that stacks a batch's clips: num_frames each
            clip = repeated_to(Clip(pngs, timing["times"], timing["rate"], timing["duration"]), sampling.num_frames)
            pngs, timing = clip.frames, clip.timing()
        row = dict(llava_example(sample, [{"bytes": png, "path": None} for png in pngs]), clip=timing)
        if processor is not None:
            length, tokens = sequence_length(processor, family, row)
            if budget and tokens > budget:  # a clip its container could not tell about (a URL): counted now
                reason = over_budget_reason(tokens, len(row["images"]), None, budget, "--frames/--max-frames", False)
                rejects.append(Reject(sample.line, sample.video, reason, "over max_visual_tokens", own_id(sample)))
                continue
            if args.max_length and length > args.max_length:
                reason = (
                    f"{length} tokens ({len(row['images'])} frames + text) is over max_length={args.max_length}; "
                    "fewer --frames or a smaller --size fit, truncating would cut through image tokens"
                )
                rejects.append(Reject(sample.line, sample.video, reason, "over max_length", own_id(sample)))
                continue
            lengths.append(length)
            visual.append(tokens)
        rows.append(row)
    if lengths:
        print_lengths(lengths, args.max_length)
        print(f"vtt prepare: {distribution_line(visual, budget)}")
    return rows, rejects


def within_budget(
    samples: list[Sample], sampling: Sampling, processor, family, budget: int
) -> tuple[list[Sample], list[Reject]]:
    """The samples whose predicted visual tokens fit `budget`, and a reject (with the frames that fit) for
    each other one: predicted from its container, so it is never decoded. A clip its container cannot
    tell about (a URL, a broken header) is kept: its decode says, and its real count is checked then."""
    family = dataclasses.replace(family, fixed_frames=False)  # prepare writes the frames a clip has
    judge = VisualBudget(processor, family, sampling, budget, knob="--frames/--max-frames", pixels=False)
    kept, over = [], []
    for sample in samples:
        if reason := judge.check(sample):
            over.append(Reject(sample.line, sample.video, reason, "over max_visual_tokens", own_id(sample)))
        else:
            kept.append(sample)
    return kept, over


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
        clip = read_clip(fetch(video, downloads, policy) if is_url(video) else Path(video), sampling)
    except DownloadError as err:
        return f"download failed: {err}", "download failed"
    except VideoError as err:
        return str(err), err.cause
    partial = partial_path(target)
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:  # PNG is compressed already
            for i, frame in enumerate(clip.frames):
                ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                assert ok, "OpenCV failed to encode a decoded frame as PNG"
                archive.writestr(f"{i:05d}.png", png.tobytes())
            archive.writestr(CLIP_INFO, json.dumps(clip.timing()))  # what a video processor's metadata needs
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return None


CLIP_INFO = "clip.json"  # the frames' times, the clip's rate and length, beside its PNG frames


def read_decoded(archive: Path) -> tuple[list[bytes], dict[str, Any]]:
    """A decoded clip's PNG frames and its timing (the `clip` column of the rows)."""
    with zipfile.ZipFile(archive) as zipped:
        pngs = [zipped.read(name) for name in sorted(zipped.namelist()) if name.endswith(".png")]
        return pngs, json.loads(zipped.read(CLIP_INFO))


def decode_all(
    samples: list[Sample], sampling: Sampling, cache: Path, policy: DownloadPolicy, workers: int
) -> tuple[dict[int, Path], list[Reject]]:
    """Decode every clip not in `cache`/frames, in worker processes with a progress bar."""
    from tqdm import tqdm

    (cache / "frames").mkdir(parents=True, exist_ok=True)
    for folder in (cache / "frames", cache / "downloads"):  # partial files of killed runs
        if folder.is_dir():
            remove_stale_partials(folder)
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
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="decoding", unit="clip"):
                    line = futures[future]
                    error = future.result()  # raises what the worker raised: a full disk stops all
                    if error is None:
                        done[line] = todo[line]
                    else:
                        rejects.append(Reject(line, local[line].video, *error, own_id(local[line])))
            except BaseException:
                pool.shutdown(cancel_futures=True)  # else every clip queued would still be decoded first
                raise
    return done, rejects


def model_config(model: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


def load_processor(model: str):
    """The model's processor, with the settings many hub LLaVA processors lack filled from its config."""
    from transformers import AutoConfig, AutoProcessor

    from vtt.models.llava import fix_processor

    processor = AutoProcessor.from_pretrained(model)
    fix_processor(processor, AutoConfig.from_pretrained(model))
    return processor


def sequence_length(processor, family, row: dict[str, Any]) -> tuple[int, int]:
    """Tokens of the whole conversation as the trainer will see it (its collator's row, visual tokens
    included), and its visual tokens."""
    from PIL import Image

    images = [Image.open(io.BytesIO(image["bytes"])).convert("RGB") for image in row["images"]]
    ids = VisionCollator(processor, family).row(dict(row, images=images))["input_ids"]
    return int(ids.shape[-1]), int((ids == placeholder_id(processor, family)).sum())


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
    clip = {"times": List(Value("float64")), "rate": Value("float64"), "duration": Value("float64")}
    return Features({"prompt": turn, "completion": turn, "images": List(Image()), "clip": clip})


def rejects_beside(out: Path) -> Path:
    """Where the rejects go when no dataset is written: beside `out`, a file no loader mistakes for a dataset."""
    return out.with_name(out.name + ".rejects.jsonl")


def write_dataset(claim: Claim, rows: list[dict[str, Any]], features, rejects: list[Reject]) -> Path | None:
    """Write the dataset and its rejects.jsonl into a staging folder, then publish it as the claim's target.

    Without rows there is no dataset (and datasets cannot save 0 nested rows): the rejects go to rejects_beside(),
    the target is left as it was, and None is returned.
    """
    from datasets import Dataset

    out = claim.target
    text = "".join(r.json() + "\n" for r in sorted(rejects, key=lambda r: r.line))
    if not rows:
        from vtt.files import write_atomically

        with space_checked(out.parent):
            write_atomically(rejects_beside(out), text)
        return None
    # The rows go to an Arrow cache in the staging folder, then save_to_disk copies them: twice their size.
    needed = 2 * sum(len(image["bytes"]) for row in rows for image in row.get("images", ())) + 1024 * len(rows)
    staging = claim.staging()
    final = staging / "dataset"
    with space_checked(out, needed, partial=staging):
        cache = str(staging / "arrow-cache")  # not ~/.cache
        data = Dataset.from_generator(_rows, gen_kwargs={"rows": rows}, features=features, cache_dir=cache)
        data.save_to_disk(str(final))
        (final / "rejects.jsonl").write_text(text)
        claim.publish(final)
    rejects_beside(out).unlink(missing_ok=True)  # an earlier run's, which wrote no dataset
    return out / "rejects.jsonl"


def _rows(rows):
    yield from rows


def summarize(total: int, rejects: list[Reject], max_ratio: float, out: Path, written: Path | None) -> int:
    """Print what was kept and why the rest was not; 1 when nothing was written or too many were rejected.

    `written`: the rejects file, inside the new dataset or (no dataset written) beside `out`.
    """
    kinds = Counter(r.kind or r.reason for r in rejects)
    ratio = len(rejects) / total if total else 0.0
    where = f"written to {out}" if written else "usable"
    print(f"vtt prepare: {total - len(rejects)} of {total} samples {where}; {len(rejects)} rejected")
    for kind, n in kinds.most_common():
        print(f"  {n:6d}  {kind}")
    if rejects:
        print(f"  reasons, line by line: {written or rejects_beside(out)}")
    if written is None:
        left = f"{out} is left as it was" if out.exists() else f"{out} was not created"
        print(f"vtt prepare: no sample could be used, so no dataset was written ({left}): exit 1")
        return 1
    if ratio > max_ratio:
        print(f"vtt prepare: {ratio:.1%} rejected is over --max-reject-ratio {max_ratio:.1%}: exit 1")
        return 1
    return 0
