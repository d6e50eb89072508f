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


def test_llava_rows_hold_the_question_and_the_clip_with_its_times(demo_inputs):
    data = llava_dataset(demo_inputs["manifest"], Sampling(num_frames=3))
    row = data[0]
    assert len(row["images"]) == 3 and len(row["clip"]["times"]) == 3
    assert row["clip"]["times"] == sorted(row["clip"]["times"]) and row["clip"]["rate"] > 0
    assert 0 < row["clip"]["times"][-1] < row["clip"]["duration"]
    assert [part["type"] for part in row["prompt"][0]["content"]] == ["text"]  # the collator adds the clip
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
    batch = data[0:3]  # rows 0 and 1 refilled, row 2 its own; the failed clips are not decoded again
    assert [len(images) for images in batch["images"]] == [2, 2, 2]
    reported = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted({(r["line"], r["id"]) for r in reported}) == [(1, "clip-0"), (2, "clip-1")]
    assert len(reported) == 2, "each failed clip is reported once"


def test_a_row_whose_clip_and_refills_all_fail_trains_on_a_stand_in_without_labels(demo_inputs, tmp_path):
    """Its rank still runs the vision tower (no ZeRO-3 hang), and the row adds nothing to the loss."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vtt.data.collate import VisionCollator
    from vtt.models.families import family_of
    from vtt.models.llava import fix_processor

    count = len(demo_inputs["manifest"].read_text().splitlines())
    manifest, _ = manifest_with_broken_clips(demo_inputs, tmp_path, broken=count)
    data = llava_dataset(manifest, Sampling(num_frames=2))
    batch = [data[i] for i in range(2)]
    assert all(not row["images"] for row in batch)
    processor = AutoProcessor.from_pretrained(demo_inputs["llava"])
    model = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"])
    fix_processor(processor, model.config)
    collated = VisionCollator(processor, family_of(model.config))(batch)
    assert collated["pixel_values"].shape[0] == 2 * 2  # a two-frame stand-in a row
    assert (collated["labels"] == -100).all()
