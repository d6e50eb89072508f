"""Training data from a manifest of videos, in each trainer's format.

A manifest is JSONL or CSV, one sample a line: `video` (a path relative to the manifest), `question`,
`answer` (or `caption`), and optionally `title`, `description`, `tags`, `id`.

    samples = read_manifest("videos/manifest.jsonl")
    train = llava_dataset("videos/manifest.jsonl", num_frames=5)   # prompt / completion / images
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from vtt.video import sample_frames

REQUIRED = ("video", "question", "answer")


@dataclass
class Sample:
    """One manifest line, with its line number kept for error reports."""

    line: int
    video: str
    question: str
    answer: str
    id: str = ""
    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    text = path.read_text()
    if path.suffix == ".csv":
        return [(i + 2, row) for i, row in enumerate(csv.DictReader(text.splitlines()))]
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not a JSON object: {err}") from None
    return rows


def read_manifest(path: str | Path, answers: bool = True) -> list[Sample]:
    """Every sample of a manifest, video paths made absolute; a ValueError names a bad line and field.

    With answers=False (questions to predict) a line may leave out its answer: it is then "".
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest")
    samples = []
    for line, row in _rows(path):
        row = dict(row)
        if "answer" not in row and "caption" in row:
            row["answer"] = row.pop("caption")
        required = REQUIRED if answers else REQUIRED[:2]
        missing = [key for key in required if not row.get(key)]
        if missing:
            raise ValueError(f"{path}:{line}: missing {', '.join(missing)}; every line needs {', '.join(required)}")
        tags = row.get("tags") or []
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.replace(";", ",").split(",") if t.strip()]
        video = row["video"]
        if "://" not in video:
            video = str((path.parent / video).resolve())
        samples.append(
            Sample(
                line=line,
                video=video,
                question=str(row["question"]),
                answer=str(row.get("answer") or ""),
                id=str(row.get("id") or line),
                title=str(row.get("title") or ""),
                description=str(row.get("description") or ""),
                tags=[str(t) for t in tags],
            )
        )
    return samples


def llava_example(sample: Sample, frames: list) -> dict[str, Any]:
    """The seed's conversation, split at the assistant turn so the loss covers the answer only."""
    return {
        "prompt": [
            {"role": "user", "content": [{"type": "text", "text": sample.question}] + [{"type": "image"}] * len(frames)}
        ],
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


def llava_dataset(path: str | Path, num_frames: int) -> Dataset:
    """prompt / completion / images rows from a prepared folder or, decoding now, from a manifest."""
    if is_prepared(path):
        return load_from_disk(str(path))
    rows = [llava_example(s, sample_frames(s.video, num_frames)) for s in read_manifest(path)]
    return Dataset.from_list(rows)


def seq2seq_dataset(path: str | Path) -> Dataset:
    """source / target rows from a prepared folder or a manifest (no frames decoded)."""
    if is_prepared(path):
        return load_from_disk(str(path))
    return Dataset.from_list([{"source": seq2seq_source(s), "target": s.answer} for s in read_manifest(path)])
