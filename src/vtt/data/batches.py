"""Micro batches sized by tokens: samples grouped so each group's predicted tokens stay under a budget.

Clips of 2 to 60 seconds differ tenfold in visual tokens, so a micro batch of N samples may carry four short
clips or four long ones: a rank given the long ones runs out of memory or holds every other rank at the
step's all-reduce. With `max_tokens_per_batch`, a micro batch is a group of samples whose predicted tokens
(visual tokens from the containers, vtt.data.budget, plus their text) fit the budget, packed largest first
so that groups come out nearly full: every rank's micro batch then carries about the same tokens.

    groups = token_groups(tokens, max_tokens, seed)       # lists of sample indices
    train = grouped(dataset, groups)                      # item i: the rows of group i (the collator's batch)

The Trainer's sampler shuffles the groups each epoch and deals them to the ranks; with a micro batch of one
item, VisionCollator takes that item's group as its rows.
"""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import Dataset

from vtt.data.collate import GROUP, prompted, question_of
from vtt.models.visual_tokens import visual_tokens


def token_groups(tokens: Sequence[int], max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Sample indices in groups whose tokens sum to at most `max_tokens` (a sample over it alone): largest first,
    each into the fullest group it fits; the groups in a seeded random order."""
    groups: list[list[int]] = []
    open_rooms: list[tuple[int, int]] = []  # (tokens a group can still take, the group), sorted
    for i in sorted(range(len(tokens)), key=lambda i: -tokens[i]):
        at = bisect.bisect_left(open_rooms, (tokens[i], -1))
        if at < len(open_rooms):
            room, g = open_rooms.pop(at)
        else:
            room, g = max_tokens, len(groups)
            groups.append([])
        groups[g].append(i)
        if room - tokens[i] > 0:
            bisect.insort(open_rooms, (room - tokens[i], g))
    random.Random(seed).shuffle(groups)
    return groups


class ReadGroup:
    """A datasets transform: a group's sample indices (JSON in the `images` column, a column the Trainer keeps
    for a vision dataset) become its rows under GROUP, read from `dataset` at once (its clips decode then)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        groups = []
        for indices in batch["images"]:
            columns = self.dataset[json.loads(indices)]
            groups.append([dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)])
        # TRL tells a vision dataset by an `images` key, and then leaves its rows to the collator as they are.
        return {GROUP: groups, "images": [[] for _ in groups]}


def grouped(dataset: Any, groups: list[list[int]]) -> Dataset:
    """`dataset` read by `groups`: item i holds the rows of group i, which VisionCollator takes as its batch."""
    return Dataset.from_dict({"images": [json.dumps(group) for group in groups]}).with_transform(ReadGroup(dataset))


def text_tokens(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[int]:
    """The tokens of each (question, answer) pair."""
    return [len(ids) for ids in tokenizer([f"{q} {a}" for q, a in pairs], add_special_tokens=False)["input_ids"]]


def prompt_overhead(processor, family, sampling) -> tuple[float, float]:
    """(a, b): a prompt's tokens besides its visual ones are a + b * frames (the chat template's, and what a
    processor writes per frame: SmolVLM a frame's time and wrappers, Qwen3-VL each pair's time). Measured
    on the processor itself with two stand-in clips."""
    tokenizer = getattr(processor, "tokenizer", processor)
    side = 64
    answer = len(tokenizer(closing_text(processor), add_special_tokens=False)["input_ids"])
    counts = []
    for frames in (sampling.multiple * 2, sampling.multiple * 4):
        stand_in = [np.zeros((side, side, 3), dtype=np.uint8)] * frames
        clip = {"times": [k / 2 for k in range(frames)], "rate": 2.0, "duration": frames / 2}
        _, features = prompted(processor, family, "", stand_in, clip)
        counts.append(features["input_ids"].shape[1] + answer - visual_tokens(processor, family, frames, side, side))
    per_frame = (counts[1] - counts[0]) / (sampling.multiple * 2)
    return counts[0] - per_frame * sampling.multiple * 2, per_frame


def closing_text(processor) -> str:
    """What the chat template writes after an answer to close its turn (tokens every row's answer carries)."""
    turns = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "ANSWER"}]}]  # fmt: skip
    text = processor.apply_chat_template(turns, tokenize=False)
    return text[text.rfind("ANSWER") + len("ANSWER") :]


def row_tokens(budget, processor, family, rows: Sequence[tuple[int, str, str]]) -> list[float | None]:
    """The tokens of each (manifest line, question, answer) row whose clip `budget` counted (None where it
    did not): its visual tokens, what the processor writes around them, its text."""
    fixed, per_frame = prompt_overhead(processor, family, budget.sampling)
    text = text_tokens(getattr(processor, "tokenizer", processor), [(q, a) for _, q, a in rows])
    counted = [budget.by_line.get(line) for line, _, _ in rows]
    return [
        None if clip is None else clip[0] + fixed + per_frame * clip[1] + words
        for clip, words in zip(counted, text, strict=True)
    ]


def predicted_tokens(train: Dataset, budget, processor, family) -> list[int]:
    """Each row of `train` (llava_dataset's, read with `budget`) in tokens before its clip is decoded
    (row_tokens); a clip the container could not count (a URL) is taken at the mean of those counted."""
    first = train.data.column("images")[0]
    if not isinstance(first.as_py()[0], str):
        raise ValueError("max_tokens_per_batch needs a manifest (its clips' containers), not a vtt prepare folder")
    refs = [json.loads(ref[0]) for ref in train.data.column("images").to_pylist()]
    turns = train.data.select(["prompt", "completion"]).to_pylist()
    rows = [
        (ref["line"], question_of(t["prompt"]), question_of(t["completion"]))
        for ref, t in zip(refs, turns, strict=True)
    ]
    tokens = row_tokens(budget, processor, family, rows)
    known = [count for count in tokens if count is not None]
    mean = sum(known) / len(known) if known else 0
    return [round(mean if count is None else count) for count in tokens]


def by_tokens(train: Dataset, budget, processor, family, max_tokens: int, seed: int) -> tuple[Dataset, dict]:
    """`train` (llava_dataset's, read with `budget`'s per-clip counts) in groups of at most `max_tokens`
    predicted tokens, and what vtt-run.json records of them. A clip the containers could not count (a URL)
    is taken at the mean of those counted."""
    tokens = predicted_tokens(train, budget, processor, family)
    groups = token_groups(tokens, max_tokens, seed)
    sums = [sum(tokens[i] for i in group) for group in groups]
    record = {
        "max_tokens_per_batch": max_tokens,
        "groups": len(groups),
        "samples_per_group": round(len(tokens) / len(groups), 2),
        "tokens_per_group": {"mean": round(sum(sums) / len(sums)), "max": max(sums)},
        "over_budget_alone": sum(1 for total in sums if total > max_tokens),
    }
    return grouped(train, groups), record
