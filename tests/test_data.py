"""Manifests and the two trainers' data formats."""

from __future__ import annotations

import pytest
from conftest import manifest_with_broken_clips

from vtt.data.datasets import llava_dataset, read_manifest, seq2seq_dataset, seq2seq_source
from vtt.data.video import Sampling


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


def test_a_clip_that_fails_gives_its_place_to_the_next_sample_and_is_rejected_once(demo_inputs, tmp_path):
    import json

    manifest, rows = manifest_with_broken_clips(demo_inputs, tmp_path, broken=2)
    rejects = tmp_path / "rejects.jsonl"
    data = llava_dataset(manifest, Sampling(num_frames=2), rejects)
    first = data[0]  # clips 0 and 1 are broken: clip 2 takes row 0's place
    assert len(first["images"]) == 2
    assert first["completion"][0]["content"][0]["text"] == rows[2]["answer"]
    assert [part["type"] for part in first["prompt"][0]["content"]] == ["text", "image", "image"]
    batch = data[0:3]  # rows 0 and 1 refilled, row 2 its own; the failed clips are not decoded again
    assert [len(images) for images in batch["images"]] == [2, 2, 2]
    reported = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted({(r["line"], r["id"]) for r in reported}) == [(1, "clip-0"), (2, "clip-1")]
    assert len(reported) == 2, "each failed clip is reported once"


def test_a_batch_is_dropped_only_when_no_sample_after_it_decodes(demo_inputs, tmp_path):
    from vtt.data.datasets import skip_rejected
    from vtt.data.video import VideoError

    count = len(demo_inputs["manifest"].read_text().splitlines())
    manifest, _ = manifest_with_broken_clips(demo_inputs, tmp_path, broken=count)
    data = llava_dataset(manifest, Sampling(num_frames=2))
    batch = [data[i] for i in range(2)]
    assert all(not row["images"] for row in batch)
    with pytest.raises(VideoError, match="failed to decode"):
        skip_rejected(lambda rows: rows)(batch)
