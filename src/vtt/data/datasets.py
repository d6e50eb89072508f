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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from vtt.data.download import DownloadError, DownloadPolicy, fetch, is_url
from vtt.data.manifest import REQUIRED, Reject, Sample, manifest_entries, read_manifest  # noqa: F401 (re-exported)
from vtt.data.video import Sampling, VideoError, read_frames


def llava_example(sample: Sample, frames: list) -> dict[str, Any]:
    """The seed's conversation, split at the assistant turn so the loss covers the answer only."""
    return {
        "prompt": [
            {"role": "user", "content": [{"type": "text", "text": sample.question}] + [{"type": "image"}] * len(frames)}
        ],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": sample.answer}]}],
        "images": frames,
    }


def with_image_parts(prompt: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The user turn of `prompt` with exactly `count` image parts after its text."""
    [turn] = prompt
    text = [part for part in turn["content"] if part["type"] != "image"]
    return [{**turn, "content": text + [{"type": "image"}] * count}]


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


def frame_size(processor) -> int | tuple[int, int] | None:
    """The frame size the processor's image processor wants: (width, height), a longest side, or None."""
    size = getattr(getattr(processor, "image_processor", processor), "size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"longest_edge": size}
    if size.get("height") and size.get("width"):
        return (int(size["width"]), int(size["height"]))
    return int(size["longest_edge"]) if size.get("longest_edge") else None


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
    without a clip. Only when REFILL_TRIES samples in a row fail is the row left without images, which
    `skip_rejected` drops.
    """

    def __init__(self, sampling: Sampling, rejects: Path | None = None, samples: list[Sample] | None = None):
        self.sampling, self.rejects, self.samples = sampling, rejects, samples or []
        self.failed: set[int] = set()  # lines that failed in this process: reported once, never retried

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        from PIL import Image

        batch = dict(batch)
        for i, refs in enumerate(batch["images"]):
            ref = json.loads(refs[0])
            frames = self.frames(ref)
            if not frames and self.samples:
                sample, frames = self.substitute(ref)
                if frames:
                    example = llava_example(sample, frames)
                    batch["prompt"][i], batch["completion"][i] = example["prompt"], example["completion"]
            # A clip shorter than the frames asked for gives fewer: the prompt gets one image part per frame.
            batch["prompt"][i] = with_image_parts(batch["prompt"][i], len(frames))
            batch["images"][i] = [Image.fromarray(frame) for frame in frames]
        return batch

    def substitute(self, ref: dict[str, Any]) -> tuple[Sample | None, list]:
        """The first of the REFILL_TRIES samples after `ref`'s whose clip decodes, and its frames; (None, [])."""
        for step in range(1, REFILL_TRIES + 1):
            sample = self.samples[(ref["index"] + step) % len(self.samples)]
            frames = self.frames({"video": sample.video, "line": sample.line, "id": own_id(sample)})
            if frames:
                print(f"vtt: line {ref['line']}'s place in the batch refilled with line {sample.line}", file=sys.stderr)
                return sample, frames
        return None, []

    def frames(self, ref: dict[str, Any]) -> list:
        if ref["line"] in self.failed:
            return []
        try:
            return read_frames(local_video(ref["video"], DOWNLOAD_CACHE), self.sampling)
        except (VideoError, DownloadError) as err:
            self.failed.add(ref["line"])
            report(Reject(ref["line"], ref["video"], str(err), err.cause, ref.get("id", "")), self.rejects)
            return []


def report(reject: Reject, rejects: Path | None) -> None:
    """Say on stderr that a sample was skipped, and append it to the `rejects` JSONL file when given."""
    print(f"vtt: skipped manifest {reject.where}: {reject.reason}", file=sys.stderr)
    if rejects is not None:
        rejects.parent.mkdir(parents=True, exist_ok=True)
        with rejects.open("a") as sink:  # one short append per line: safe from several workers
            sink.write(reject.json() + "\n")


def skip_rejected(collator: Callable) -> Callable:
    """Wrap a collator so rows without frames (clips that failed, with no refill that decoded) are left out."""

    def collate(rows: list[dict[str, Any]]):
        kept = [row for row in rows if "images" not in row or row["images"]]
        if not kept:
            raise VideoError(
                "batch",
                f"every one of its {len(rows)} clips and the {REFILL_TRIES} samples after each failed to decode "
                "(see the lines above): the data is mostly unreadable; check the videos named there",
            )
        return collator(kept)

    return collate


def pad_to_multiple(collator: Callable, multiple: int | None, pad_token_id: int) -> Callable:
    """Wrap a collator so each batch's sequence length is a multiple of `multiple`, padded on the right.

    Batches of varying length each give attention a new shape, and cuDNN's SDPA kernel builds an
    execution plan for every new shape (~45 ms a pass on an H100, bench/RESULTS.md); rounded lengths
    repeat, so the plans are built once. TRL's own `pad_to_multiple_of` is not implemented for
    vision-language prompt-completion rows. Added positions are padding: mask 0, label -100.
    """
    import torch

    if not multiple or multiple <= 1:
        return collator
    fill = {"input_ids": pad_token_id, "labels": -100}

    def collate(rows: list[dict[str, Any]]):
        batch = collator(rows)
        length = batch["input_ids"].shape[1]
        extra = -length % multiple
        if not extra:
            return batch
        for key, value in list(batch.items()):
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == length:
                batch[key] = torch.nn.functional.pad(value, (0, extra), value=fill.get(key, 0))
        return batch

    return collate


def own_id(sample: Sample) -> str:
    """The sample's id as the manifest gave it; "" for a line without one (its id is then its line number)."""
    return "" if sample.id == str(sample.line) else sample.id


def llava_dataset(
    path: str | Path,
    sampling: Sampling | int,
    rejects: Path | None = None,
    max_reject_ratio: float = 1.0,
) -> Dataset:
    """prompt / completion / images rows from a prepared folder, or from a manifest decoding on the fly.

    Manifest lines without question/answer, and local videos that do not exist, are reported now;
    more than `max_reject_ratio` of them is a ValueError.
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
        else:
            kept.append(sample)
    if os.environ.get("RANK", "0") == "0":  # every process reads the manifest; one reports it
        for reject in rejected:
            report(reject, rejects)
    total = len(kept) + len(rejected)
    if not kept or len(rejected) > max_reject_ratio * total:
        raise ValueError(
            f"{path}: {len(rejected)} of {total} samples rejected (over max_reject_ratio={max_reject_ratio}); "
            "fix the lines named above or raise max_reject_ratio"
        )
    refs = [json.dumps({"video": s.video, "line": s.line, "id": own_id(s), "index": i}) for i, s in enumerate(kept)]
    rows = [llava_example(s, [ref]) for s, ref in zip(kept, refs, strict=True)]
    return Dataset.from_list(rows).with_transform(DecodeFrames(sampling, rejects, kept))


def seq2seq_dataset(path: str | Path) -> Dataset:
    """source / target rows from a prepared folder or a manifest (no frames decoded)."""
    if is_prepared(path):
        return load_from_disk(str(path))
    return Dataset.from_list([{"source": seq2seq_source(s), "target": s.answer} for s in read_manifest(path)])
