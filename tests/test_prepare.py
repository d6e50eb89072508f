"""Downloads, `vtt prepare`, and training from its output and from a manifest decoded on the fly."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
from conftest import logged_losses, train
from datasets import load_from_disk
from PIL import Image
from videos import H264, pattern_clip

from vtt.cli import main
from vtt.download import DownloadError, DownloadPolicy, fetch

FAST = DownloadPolicy(retries=2, base_wait=0.05, max_wait=0.1, timeout=5)


class FlakyServer:
    """An HTTP server on 127.0.0.1 (a free port) that answers 429 `failures` times, then serves `body`."""

    def __init__(self, body: bytes, failures: int = 2):
        self.body, self.failures, self.requests = body, failures, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                if outer.requests <= outer.failures:
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(demo_inputs):
    server = FlakyServer((demo_inputs["manifest"].parent / "clip000.mp4").read_bytes())
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_retries_after_429_then_downloads_once(flaky, tmp_path):
    path = fetch(f"{flaky.url}/clip.mp4", tmp_path, FAST)
    assert flaky.requests == 3 and path.read_bytes() == flaky.body and path.suffix == ".mp4"
    assert fetch(f"{flaky.url}/clip.mp4", tmp_path, FAST) == path and flaky.requests == 3  # cached


def test_fetch_of_unreachable_url_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="ConnectError"):
        fetch(f"http://127.0.0.1:{closed_port()}/clip.mp4", tmp_path, FAST)
    assert not any(tmp_path.iterdir())


def test_fetch_refuses_other_schemes_and_files_over_the_size_cap(flaky, tmp_path):
    with pytest.raises(DownloadError, match="only http and https"):
        fetch("file:///etc/passwd", tmp_path, FAST)
    flaky.failures = 0
    with pytest.raises(DownloadError, match="over the size cap"):
        fetch(f"{flaky.url}/clip.mp4", tmp_path, DownloadPolicy(max_bytes=100))
    assert not any(tmp_path.iterdir())  # no partial file left


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
        {"video": "missing.mp4", "question": q, "answer": a},
        {"video": "text.mp4", "question": q, "answer": a},
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
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["text", "image", "image", "image"]
    rejects = {r["line"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert sorted(rejects) == [7, 8, 9, 10]
    assert "no such file" in rejects[7]["reason"] and rejects[7]["video"].endswith("missing.mp4")
    assert "cannot open" in rejects[8]["reason"]
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
    [first, *_] = map(json.loads, (tmp_path / "over" / "rejects.jsonl").read_text().splitlines())
    assert first["reason"].startswith("100 tokens (4 frames + text) is over max_length=99")


def test_prepare_seq2seq_writes_source_target_without_decoding(mixed_manifest, tmp_path):
    out = tmp_path / "text"
    assert prepare(mixed_manifest, out, "--trainer", "seq2seq", "--max-reject-ratio", "0.1") == 0
    data = load_from_disk(str(out))
    assert data.column_names == ["source", "target"] and len(data) == 9  # only the line without an answer
    assert data[3]["source"].endswith("| tags: x")


@pytest.mark.slow
def test_llava_trains_from_a_prepared_folder(demo_inputs, tmp_path):
    assert prepare(demo_inputs["manifest"], tmp_path / "prepared", "--trainer", "llava", "--frames", "3") == 0
    run = tmp_path / "run"
    overrides = ["--model_name_or_path", str(demo_inputs["llava"]), "--dataset", str(tmp_path / "prepared")]
    train("jobs/tiny-llava.yaml", 1, [*overrides, "--output_dir", str(run), "--max_steps", "2"])
    assert len(logged_losses(run)) == 2


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
