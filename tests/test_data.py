"""Manifests and the two trainers' data formats."""

from __future__ import annotations

import pytest

from vtt.data import llava_dataset, read_manifest, seq2seq_dataset, seq2seq_source
from vtt.video import Sampling


def test_manifest_csv_accepts_caption_alias_and_relative_paths(tmp_path):
    (tmp_path / "m.csv").write_text("video,question,caption,tags\nclips/a.mp4,what?,a cat,pets;cats\n")
    [sample] = read_manifest(tmp_path / "m.csv")
    assert sample.answer == "a cat"
    assert sample.video == str((tmp_path / "clips" / "a.mp4").resolve())
    assert sample.tags == ["pets", "cats"]
    assert sample.line == 2


def test_manifest_line_without_answer_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4", "question": "q", "answer": "x"}\n{"video": "b.mp4"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: missing question, answer"):
        read_manifest(tmp_path / "m.jsonl")


def test_seq2seq_source_carries_metadata(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"video": "a.mp4", "question": "what?", "answer": "x", "title": "T", "description": "D", "tags": ["t1"]}\n'
    )
    [sample] = read_manifest(tmp_path / "m.jsonl")
    assert seq2seq_source(sample) == "what? | title: T | description: D | tags: t1"


def test_llava_rows_hold_one_image_part_per_frame(demo_inputs):
    data = llava_dataset(demo_inputs["manifest"], Sampling(num_frames=3))
    row = data[0]
    assert len(row["images"]) == 3
    assert [part["type"] for part in row["prompt"][0]["content"]] == ["text", "image", "image", "image"]
    assert row["completion"][0]["role"] == "assistant"


def test_seq2seq_rows_pair_source_with_answer(demo_inputs):
    data = seq2seq_dataset(demo_inputs["manifest"])
    assert data[0]["target"].startswith("a ") and "title:" in data[0]["source"]
