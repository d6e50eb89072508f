"""Training data from a manifest of videos, in each trainer's format.

A manifest is JSONL or CSV, one sample a line: `video` (a path relative to the manifest, or an
http(s) URL), `question`, `answer` (or `caption`), and optionally `title`, `description`, `tags`, `id`.

    samples = read_manifest("videos/manifest.jsonl")
    train = llava_dataset("videos/manifest.jsonl", Sampling(num_frames=5))   # prompt / completion / images

Given a manifest, the llava data decodes each clip when a row is read (in the DataLoader's worker
processes); a clip that fails is reported and its place taken by the next sample that decodes. Given a folder
made by `vtt prepare`, the frames were decoded once, ahead of time.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_from_disk

from vtt.data.budget import VisualBudget
from vtt.data.download import DownloadError, DownloadPolicy, fetch, is_url
from vtt.data.manifest import REQUIRED, Reject, Sample, manifest_entries, read_manifest  # noqa: F401 (re-exported)
from vtt.data.video import Clip, Sampling, VideoError, read_clip


def llava_example(sample: Sample, frames: list) -> dict[str, Any]:
    """The question and the answer, split at the assistant turn so the loss covers the answer only, and the
    clip's frames; vtt.data.collate puts the clip into the user turn the way the model's family takes it."""
    return {
        "prompt": [{"role": "user", "content": [{"type": "text", "text": sample.question}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": sample.answer}]}],
        "images": frames,
    }


def seq2seq_source(sample: Sample) -> str:
    """The question followed by whatever metadata the sample has."""
    parts = [sample.question]
    if sample.title:
        parts.append(f"title: {sample.title}")
    if sample.description:
        parts.append(f"description: {sample.description}")
    if sample.tags:
        parts.append(f"tags: {', '.join(sample.tags)}")
    return " | ".join(parts)


def is_prepared(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "dataset_info.json").exists()


def local_video(video: str, cache: Path, policy: DownloadPolicy | None = None) -> Path:
    """A manifest's `video` as a local file: URLs are fetched into `cache` once."""
    return fetch(video, cache, policy) if is_url(video) else Path(video)


DOWNLOAD_CACHE = Path(os.environ.get("VTT_CACHE", Path.home() / ".cache" / "vtt")) / "downloads"


REFILL_TRIES = 16  # samples tried in place of one whose clip failed, before its row is left empty


class DecodeFrames:
    """A datasets transform: each row's clip reference becomes its frames, decoded when the row is read.

    The reference waits in the `images` column itself (JSON: video, line, index), because the Trainer
    drops every column its collator does not take before the transform runs. A clip that cannot give
    frames is reported (stderr, and the `rejects` JSONL file when given) and its row is refilled with the
    next sample of `samples` whose clip decodes, so a micro batch keeps its size and no rank is left
    without a clip. Only when REFILL_TRIES samples in a row fail is the row left without images: the
    collator gives it a stand-in clip and no labels (vtt.data.collate), so its rank still runs the model.
    Each row also gets `clip`: its frames' times, the clip's rate and length, for the video processors.
    """

    def __init__(
        self,
        sampling: Sampling,
        rejects: Path | None = None,
        samples: list[Sample] | None = None,
        fixed_frames: bool = False,
        fitted: dict[int, int] | None = None,
    ):
        self.sampling, self.rejects, self.samples = sampling, rejects, samples or []
        self.fitted = fitted or {}  # manifest line -> the fewer frames its clip is sampled at (fit_visual_tokens)
        # A family that stacks a batch's clips needs num_frames from every clip: a shorter one repeats frames.
        self.fixed_frames = fixed_frames
        self.failed: set[int] = set()  # lines that failed in this process: reported once, never retried

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch, clip=[None] * len(batch["images"]))
        for i, refs in enumerate(batch["images"]):
            ref = json.loads(refs[0])
            clip = self.clip(ref)
            if clip is None and self.samples:
                sample, clip = self.substitute(ref)
                if clip is not None:
                    example = llava_example(sample, [])
                    batch["prompt"][i], batch["completion"][i] = example["prompt"], example["completion"]
            # No frames (the clip and its refills failed): the collator gives the row a stand-in, without labels.
            batch["images"][i] = clip.frames if clip else []
            batch["clip"][i] = clip.timing() if clip else None
        return batch

    def substitute(self, ref: dict[str, Any]) -> tuple[Sample | None, Clip | None]:
        """The first of the REFILL_TRIES samples after `ref`'s whose clip decodes, and its clip; (None, None)."""
        for step in range(1, REFILL_TRIES + 1):
            sample = self.samples[(ref["index"] + step) % len(self.samples)]
            clip = self.clip({"video": sample.video, "line": sample.line, "id": own_id(sample)})
            if clip is not None:
                print(f"vtt: line {ref['line']}'s place in the batch refilled with line {sample.line}", file=sys.stderr)
                return sample, clip
        return None, None

    def clip(self, ref: dict[str, Any]) -> Clip | None:
        if ref["line"] in self.failed:
            return None
        sampling = self.sampling
        if ref["line"] in self.fitted:  # over max_visual_tokens: the frames that fit, over the whole clip
            frames = self.fitted[ref["line"]]
            fewer = {"num_frames": frames} if sampling.fps is None else {"max_frames": frames}
            sampling = replace(sampling, **fewer)
        try:
            clip = read_clip(local_video(ref["video"], DOWNLOAD_CACHE), sampling)
        except (VideoError, DownloadError) as err:
            self.failed.add(ref["line"])
            report(Reject(ref["line"], ref["video"], str(err), err.cause, ref.get("id", "")), self.rejects)
            return None
        return repeated_to(clip, self.sampling.num_frames) if self.fixed_frames else clip


def repeated_to(clip: Clip, count: int) -> Clip:
    """`clip` with `count` frames: a shorter clip's frames repeated evenly (as np.linspace picks them)."""
    if len(clip.frames) >= count:
        return clip
    picks = np.linspace(0, len(clip.frames) - 1, count).round().astype(int)
    return Clip([clip.frames[k] for k in picks], [clip.times[k] for k in picks], clip.rate, clip.duration)


def report(reject: Reject, rejects: Path | None) -> None:
    """Say on stderr that a sample was skipped, and append it to the `rejects` JSONL file when given."""
    print(f"vtt: skipped manifest {reject.where}: {reject.reason}", file=sys.stderr)
    if rejects is not None:
        rejects.parent.mkdir(parents=True, exist_ok=True)
        with rejects.open("a") as sink:  # one short append per line: safe from several workers
            sink.write(reject.json() + "\n")


def own_id(sample: Sample) -> str:
    """The sample's id as the manifest gave it; "" for a line without one (its id is then its line number)."""
    return "" if sample.id == str(sample.line) else sample.id


def llava_dataset(
    path: str | Path,
    sampling: Sampling | int,
    rejects: Path | None = None,
    max_reject_ratio: float = 1.0,
    fixed_frames: bool = False,
    budget: VisualBudget | None = None,
) -> Dataset:
    """prompt / completion / images rows from a prepared folder, or from a manifest decoding on the fly.

    Manifest lines without question/answer, local videos that do not exist and (with a `budget`) clips
    whose container says they give more visual tokens than its cap are reported now; more than
    `max_reject_ratio` of them is a ValueError.
    """
    if is_prepared(path):
        return load_from_disk(str(path))
    sampling = Sampling(num_frames=sampling) if isinstance(sampling, int) else sampling
    samples, rejected = manifest_entries(path)
    kept = []
    for sample in samples:
        if not is_url(sample.video) and not Path(sample.video).is_file():
            reason = f"{sample.video}: no such file"
            rejected.append(Reject(sample.line, sample.video, reason, "no such file", own_id(sample)))
        elif budget is not None and (over := budget.check(sample)):
            rejected.append(Reject(sample.line, sample.video, over, "over max_visual_tokens", own_id(sample)))
        else:
            kept.append(sample)
    if os.environ.get("RANK", "0") == "0":  # every process reads the manifest; one reports it
        for reject in rejected:
            report(reject, rejects)
        if budget is not None and budget.fitted:
            print(f"vtt: {len(budget.fitted)} clips over max_visual_tokens={budget.max_visual_tokens} are sampled "
                  "at the frames that fit (fit_visual_tokens)", file=sys.stderr)  # fmt: skip
    total = len(kept) + len(rejected)
    if not kept or len(rejected) > max_reject_ratio * total:
        raise ValueError(
            f"{path}: {len(rejected)} of {total} samples rejected (over max_reject_ratio={max_reject_ratio}); "
            "fix the lines named above or raise max_reject_ratio"
        )
    refs = [json.dumps({"video": s.video, "line": s.line, "id": own_id(s), "index": i}) for i, s in enumerate(kept)]
    rows = [llava_example(s, [ref]) for s, ref in zip(kept, refs, strict=True)]
    fitted = budget.fitted if budget is not None else None
    return Dataset.from_list(rows).with_transform(DecodeFrames(sampling, rejects, kept, fixed_frames, fitted))


def seq2seq_dataset(path: str | Path) -> Dataset:
    """source / target rows from a prepared folder or a manifest (no frames decoded)."""
    if is_prepared(path):
        return load_from_disk(str(path))
    return Dataset.from_list([{"source": seq2seq_source(s), "target": s.answer} for s in read_manifest(path)])
