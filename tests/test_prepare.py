"""`vtt prepare` (rows, rejects, options, full disks, stalled downloads), and training from its output
and from a manifest decoded on the fly."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import logged_losses, train
from datasets import load_from_disk
from PIL import Image
from servers import ScriptedServer, closed_port
from videos import H264, pattern_clip

from vtt.cli import main


@pytest.fixture
def flaky(demo_inputs):
    """A server that answers 429 twice, then serves a demo clip."""
    server = ScriptedServer((demo_inputs["manifest"].parent / "clip000.mp4").read_bytes(), ["429", "429", "ok"])
    yield server
    server.close()


@pytest.fixture
def mixed_manifest(demo_inputs, flaky, tmp_path):
    """6 good clips (mp4v + H.264, one by URL) and 4 bad lines of different kinds."""
    videos = demo_inputs["manifest"].parent
    for name in ("clip000.mp4", "clip001.mp4", "clip002.mp4", "clip003.mp4"):
        shutil.copy(videos / name, tmp_path / name)
    pattern_clip(tmp_path / "h264.mp4", H264, seconds=2, size="96x64")
    (tmp_path / "text.mp4").write_text("not a video")
    q, a = "what colour is the shape and where does it move", "a red square moves left"
    lines = [{"video": n, "question": q, "answer": a} for n in ("clip000.mp4", "clip001.mp4", "clip002.mp4")]
    lines += [
        {"video": "clip003.mp4", "question": q, "caption": a, "tags": ["x"]},
        {"video": "h264.mp4", "question": q, "answer": a},
        {"video": f"{flaky.url}/remote.mp4", "question": q, "answer": a},
        {"video": "missing.mp4", "question": q, "answer": a, "id": "clip-missing"},
        {"video": "text.mp4", "question": q, "answer": a, "id": "clip-text"},
        {"video": "clip000.mp4", "question": q},
        {"video": f"http://127.0.0.1:{closed_port()}/gone.mp4", "question": q, "answer": a},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def prepare(manifest: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "--manifest", str(manifest), "--out", str(out), "--workers", "2", "--retries", "2", *extra])


def test_prepare_writes_llava_rows_skips_bad_samples_and_exits_1_over_the_ratio(mixed_manifest, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert prepare(mixed_manifest, out, "--trainer", "llava", "--frames", "3", "--size", "32") == 1
    data = load_from_disk(str(out))
    assert len(data) == 6
    row = data[0]
    assert len(row["images"]) == 3 and isinstance(row["images"][0], Image.Image) and row["images"][0].size == (32, 24)
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["text"]  # the collator adds the clip
    assert len(row["clip"]["times"]) == 3 and row["clip"]["rate"] > 0  # for the video processors' metadata
    rejects = {r["line"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert sorted(rejects) == [7, 8, 9, 10]
    assert "no such file" in rejects[7]["reason"] and rejects[7]["video"].endswith("missing.mp4")
    assert "cannot open" in rejects[8]["reason"]
    assert (rejects[7]["id"], rejects[8]["id"], rejects[9]["id"]) == ("clip-missing", "clip-text", "")  # as written
    assert "missing answer" in rejects[9]["reason"]
    assert rejects[10]["reason"].startswith("download failed")
    summary = capsys.readouterr().out
    assert "6 of 10 samples written" in summary and "over --max-reject-ratio" in summary
    assert not list(tmp_path.glob(".prepared.*"))  # the staging folder was renamed into place


def test_prepare_rerun_decodes_only_what_is_not_cached(mixed_manifest, tmp_path, capsys):
    out = tmp_path / "prepared"
    prepare(mixed_manifest, out, "--trainer", "llava", "--frames", "2", "--max-reject-ratio", "1")
    capsys.readouterr()
    assert prepare(mixed_manifest, out, "--trainer", "llava", "--frames", "2", "--max-reject-ratio", "1") == 0
    assert "6 clips already decoded" in capsys.readouterr().out  # the text file is tried again, and fails again
    assert len(load_from_disk(str(out))) == 6


def test_prepare_rejects_samples_over_the_token_budget(demo_inputs, tmp_path, capsys):
    common = ["--trainer", "llava", "--model", str(demo_inputs["llava"]), "--max-reject-ratio", "1"]
    # The tiny processor: 16 tokens a 32 px frame; 4 frames + the text come to 100 tokens.
    assert prepare(demo_inputs["manifest"], tmp_path / "fits", *common, "--frames", "4", "--max-length", "100") == 0
    assert "min=100, p50=100" in capsys.readouterr().out
    assert prepare(demo_inputs["manifest"], tmp_path / "over", *common, "--frames", "4", "--max-length", "99") == 1
    # Every sample over: no dataset folder (it would not load), the reasons beside where it would be.
    assert not (tmp_path / "over").exists()
    [first, *_] = map(json.loads, (tmp_path / "over.rejects.jsonl").read_text().splitlines())
    assert first["reason"].startswith("100 tokens (4 frames + text) is over max_length=99")
    assert "no sample could be used, so no dataset was written" in capsys.readouterr().out


def test_prepare_seq2seq_writes_source_target_without_decoding(mixed_manifest, tmp_path):
    out = tmp_path / "text"
    assert prepare(mixed_manifest, out, "--trainer", "seq2seq", "--max-reject-ratio", "0.1") == 0
    data = load_from_disk(str(out))
    assert data.column_names == ["source", "target"] and len(data) == 9  # only the line without an answer
    assert data[3]["source"].endswith("| tags: x")


@pytest.mark.slow
def test_llava_trains_from_a_prepared_folder(demo_inputs, tmp_path, capsys):
    assert prepare(demo_inputs["manifest"], tmp_path / "prepared", "--trainer", "llava", "--frames", "3") == 0
    run = tmp_path / "run"
    overrides = ["--model_name_or_path", str(demo_inputs["llava"]), "--dataset", str(tmp_path / "prepared")]
    train("jobs/tiny-llava.yaml", 1, [*overrides, "--output_dir", str(run), "--max_steps", "2"])
    assert len(logged_losses(run)) == 2
    # token-sized batches read the clips' containers, which a prepared folder has not: said before queueing
    from vtt.cli import main

    capsys.readouterr()
    assert (
        main(["check", "--config", "jobs/tiny-llava.yaml", "--gpus", "1", *overrides, "--max_tokens_per_batch", "900"])
        == 1
    )
    out = capsys.readouterr().out
    assert "max_tokens_per_batch" in out and "is a vtt prepare folder" in out


@pytest.mark.slow
def test_llava_decodes_in_dataloader_workers_and_skips_a_bad_clip(demo_inputs, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    lines = demo_inputs["manifest"].read_text().splitlines()
    videos = demo_inputs["manifest"].parent
    bad = {"video": str(tmp_path / "bad.mp4"), "question": "q", "answer": "a red square moves up"}
    (tmp_path / "bad.mp4").write_text("not a video")
    rows = [json.loads(line) | {"video": str(videos / json.loads(line)["video"])} for line in lines[:4]]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [*rows, bad]))
    run = tmp_path / "run"
    overrides = ["--model_name_or_path", str(demo_inputs["llava"]), "--dataset", str(manifest)]
    done = train(
        "jobs/tiny-llava.yaml",
        1,
        [*overrides, "--output_dir", str(run), "--max_steps", "3", "--dataloader_num_workers", "2"],
    )
    assert len(logged_losses(run)) == 3
    [reject, *_] = map(json.loads, (run / "rejects.jsonl").read_text().splitlines())
    assert reject["line"] == 5 and "cannot open" in reject["reason"]
    assert "skipped manifest line 5" in done.stderr + done.stdout


def test_prepare_rejects_a_clip_whose_download_stalls_and_writes_the_rest(demo_inputs, tmp_path, capsys):
    videos = demo_inputs["manifest"].parent
    server = ScriptedServer((videos / "clip000.mp4").read_bytes(), ["stall"])
    try:
        lines = [{"video": str(videos / "clip000.mp4"), "question": "q", "answer": "a"}] * 2
        lines.append({"video": f"{server.url}/slow.mp4", "question": "q", "answer": "a"})
        manifest = tmp_path / "manifest.jsonl"
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
        args = [
            "--trainer",
            "llava",
            "--frames",
            "2",
            "--timeout",
            "0.5",
            "--retries",
            "1",
            "--max-reject-ratio",
            "0.5",
        ]
        assert prepare(manifest, tmp_path / "prepared", *args) == 0
    finally:
        server.close()
    assert len(load_from_disk(str(tmp_path / "prepared"))) == 2 and server.requests == 2
    [reject] = map(json.loads, (tmp_path / "prepared" / "rejects.jsonl").read_text().splitlines())
    assert reject["line"] == 3 and reject["reason"].startswith("download failed") and "ReadTimeout" in reject["reason"]
    assert not [p for p in (tmp_path / "prepared.cache").rglob("*") if ".part-" in p.name]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--fps", "inf", "inf is out of range: give a finite number above 0"),
        ("--fps", "nan", "nan is out of range: give a finite number above 0"),
        ("--fps", "two", "'two' is not a number"),
        ("--size", "-32", "-32 is out of range: give 1 or more"),
        ("--max-reject-ratio", "-0.1", "-0.1 is out of range: give a finite number at least 0 and at most 1"),
        ("--max-reject-ratio", "5", "5 is out of range"),
        ("--frames", "0", "0 is out of range: give 1 or more"),
        ("--workers", "0", "0 is out of range: give 1 or more"),
        ("--max-frames", "0", "0 is out of range: give 1 or more"),
        ("--max-length", "0", "0 is out of range: give 1 or more"),
        ("--retries", "-1", "-1 is out of range: give 0 or more"),
        ("--timeout", "-5", "-5 is out of range: give a finite number above 0"),
        ("--max-download-mb", "0", "0 is out of range: give a finite number above 0"),
    ],
)
def test_prepare_options_out_of_range_are_refused_with_the_option_and_range(tmp_path, capsys, option, value, message):
    argv = ["prepare", "--manifest", "m.jsonl", "--out", str(tmp_path / "o"), "--trainer", "llava", option, value]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert f"vtt prepare: error: argument {option}: {message}" in capsys.readouterr().err


def test_prepare_that_rejects_every_sample_leaves_the_earlier_output(mixed_manifest, tmp_path, capsys):
    out = tmp_path / "text"
    assert prepare(mixed_manifest, out, "--trainer", "seq2seq", "--max-reject-ratio", "1") == 0
    unanswered = tmp_path / "unanswered.jsonl"
    unanswered.write_text('{"video": "clip000.mp4", "question": "q"}\n{"video": "clip001.mp4"}\n')
    assert prepare(unanswered, out, "--trainer", "seq2seq") == 1
    assert f"no dataset was written ({out} is left as it was): exit 1" in capsys.readouterr().out
    assert len(load_from_disk(str(out))) == 9  # still the first run's
    assert [json.loads(line)["line"] for line in (tmp_path / "text.rejects.jsonl").read_text().splitlines()] == [1, 2]
    assert prepare(mixed_manifest, out, "--trainer", "seq2seq", "--max-reject-ratio", "1") == 0
    assert not (tmp_path / "text.rejects.jsonl").exists()  # the reasons of a run that wrote nothing, gone with it


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: a mapped file may linger


@pytest.fixture
def big_frames(tmp_path) -> Path:
    """4 clips of ffmpeg's test pattern at 320x240: PNG frames of tens of kB each."""
    folder = tmp_path / "videos"
    folder.mkdir()
    lines = []
    for i in range(4):
        pattern_clip(folder / f"p{i}.mp4", H264, seconds=2, size="320x240")
        lines.append({"video": f"p{i}.mp4", "question": "q", "answer": "a"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def test_prepare_on_a_full_disk_stops_with_the_space_and_keeps_the_earlier_output(
    big_frames, small_disk, tmp_path, capsys
):
    out, cache = small_disk / "prepared", ["--cache", str(tmp_path / "cache")]
    assert prepare(big_frames, out, "--trainer", "llava", "--frames", "2", "--size", "16", *cache) == 0
    capsys.readouterr()
    assert prepare(big_frames, out, "--trainer", "llava", "--frames", "12", "--size", "320", *cache) == 28
    err = capsys.readouterr().err
    # The free space (the 2 MiB less the first output) and the estimate of the need (two copies of the PNGs).
    space = r"\((2\.0|2\.1) MB free when the write began, about \d\.\d MB needed\)"
    assert re.search(rf"vtt prepare: error: {out}: no space left on the device {space}", err)
    assert f"{out} is left as it was" in err
    data = load_from_disk(str(out))
    assert len(data) == 4 and len(data[0]["images"]) == 2 and data[0]["images"][0].size == (16, 12)
    assert sorted(p.name for p in small_disk.iterdir()) == ["prepared"]  # the staging folder is gone


def test_prepare_with_its_frame_cache_on_a_full_disk_stops_and_leaves_no_partial_file(
    big_frames, small_disk, tmp_path, capsys
):
    cache = small_disk / "cache"
    args = ["--trainer", "llava", "--frames", "40", "--size", "320", "--cache", str(cache)]  # ~6 MB of PNG
    assert prepare(big_frames, tmp_path / "prepared", *args) == 28
    err = capsys.readouterr().err
    assert f"vtt prepare: error: {cache}: no space left on the device (" in err and "nothing was written to" in err
    assert not (tmp_path / "prepared").exists()
    assert not [p for p in cache.rglob("*") if ".part-" in p.name]


def test_prepare_removes_partial_files_of_killed_runs_from_its_cache(mixed_manifest, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache = tmp_path / "prepared.cache"
    stale = [
        cache / "downloads" / f"x.mp4.part-{socket.gethostname()}-{dead.pid}",
        cache / "frames" / f"y.zip.part-{dead.pid}",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    prepare(mixed_manifest, tmp_path / "prepared", "--trainer", "llava", "--frames", "2")
    assert not any(path.exists() for path in stale)


def test_prepare_rejects_samples_over_max_visual_tokens_before_decoding(demo_inputs, tmp_path, capsys):
    common = ["--trainer", "llava", "--model", str(demo_inputs["llava"]), "--max-reject-ratio", "1", "--frames", "4"]
    # The tiny LLaVA: 16 visual tokens a frame, 64 for 4 frames.
    assert prepare(demo_inputs["manifest"], tmp_path / "fits", *common, "--max-visual-tokens", "64") == 0
    out = capsys.readouterr().out
    assert "visual tokens of 8 samples: min=64, p50=64, p90=64, p99=64, mean=64.0, max=64; max_visual_tokens=64" in out
    assert prepare(demo_inputs["manifest"], tmp_path / "over", *common, "--max-visual-tokens", "40") == 1
    out = capsys.readouterr().out
    assert "0 to decode" in out and "8  over max_visual_tokens" in out  # none decoded
    [first, *_] = map(json.loads, (tmp_path / "over.rejects.jsonl").read_text().splitlines())
    assert first["reason"].startswith("64 visual tokens (4 frames) is over max_visual_tokens=40; at most 2 frames fit")


def test_prepare_predicts_a_video_familys_visual_tokens_per_clip_length(tmp_path, capsys):
    from vtt.models.tiny_video import build_tiny_vlm

    model = build_tiny_vlm("qwen2_5_vl", tmp_path / "qwen")
    lines = []
    for seconds in (1, 2, 4):
        clip = pattern_clip(tmp_path / f"c{seconds}.mp4", H264, seconds=seconds, rate=10, size="64x48")
        lines.append({"video": clip.name, "question": "what moves", "answer": "a square"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    common = ["--trainer", "llava", "--model", str(model), "--max-reject-ratio", "1", "--fps", "2"]
    # 2, 4 and 8 frames resized to the 64x64 px budget: 1, 2 and 4 temporal patches of 4x3 merged tokens.
    assert prepare(manifest, tmp_path / "out", *common, "--max-visual-tokens", "30") == 0
    out = capsys.readouterr().out
    assert "2 to decode" in out
    assert "visual tokens of 2 samples: min=12, p50=18, p90=22, p99=23, mean=18.0, max=24" in out
    [reject] = map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    assert reject["line"] == 3 and reject["kind"] == "over max_visual_tokens"
    assert reject["reason"].startswith("48 visual tokens (8 frames) is over max_visual_tokens=30; at most 4 frames fit")
