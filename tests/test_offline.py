"""Offline compute nodes: `vtt stage` fills a cache, jobs load from it with the network gone, gaps fail fast.

A small HTTP server on 127.0.0.1 stands in for the Hub: it serves a tiny NLLB saved with
save_pretrained (plus formats vtt must not stage) and a dataset repo, through the few endpoints
huggingface_hub's snapshot_download calls. Offline runs use HF_HUB_OFFLINE=1 and an endpoint where
nothing listens (127.0.0.1:9), with the fake Hub already shut down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNREACHABLE = "http://127.0.0.1:9"


class FakeHub(ThreadingHTTPServer):
    """Serves folders as Hub repos: repo info, the file tree, and file downloads (resolve)."""

    def __init__(self, repos: dict[tuple[str, str], Path]):
        self.repos = repos
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), HubHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def files(self, kind: str, repo: str) -> dict[str, Path] | None:
        folder = self.repos.get((kind, repo))
        if folder is None:
            return None
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


class HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, send_body: bool = True):
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def not_found(self, send_body: bool = True):
        self.reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, send_body)

    def handle_request(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.requests.append(f"{self.command} {path}")
        api = re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        resolve = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if api:
            kind, repo, what = api.group(1), api.group(2), api.group(3)
            files = self.server.files(kind, repo)
            if files is None:
                return self.not_found(send_body)
            if what == "revision":
                body = {"id": repo, "sha": COMMIT, "private": False, "siblings": [{"rfilename": f} for f in files]}
            else:
                body = [
                    {"type": "file", "oid": blob_id(p), "size": p.stat().st_size, "path": f} for f, p in files.items()
                ]
            return self.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, send_body)
        if resolve:
            kind = "dataset" if resolve.group(1) else "model"
            files = self.server.files(kind, resolve.group(2))
            if files is None or resolve.group(4) not in files:
                return self.not_found(send_body)
            content = files[resolve.group(4)].read_bytes()
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{blob_id(files[resolve.group(4)])}"'}
            return self.reply(200, content, headers, send_body)
        return self.not_found(send_body)

    def do_GET(self):
        self.handle_request(send_body=True)

    def do_HEAD(self):
        self.handle_request(send_body=False)


def blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def hub_repos(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """A tiny NLLB as saved by save_pretrained, with a TF copy and a pickle beside it; a dataset repo."""
    from vtt.models.tiny import build_tiny_nllb

    base = tmp_path_factory.mktemp("hub")
    model = build_tiny_nllb(base / "tiny-nllb")
    (model / "tf_model.h5").write_bytes(b"not for PyTorch")
    (model / "pytorch_model.bin").write_bytes(b"the same weights, pickled")
    data = base / "clips"
    data.mkdir()
    (data / "train.jsonl").write_text('{"video": "a.mp4", "question": "q", "answer": "a"}\n')
    return {("model", "vtt-test/tiny-nllb"): model, ("dataset", "vtt-test/clips"): data}


def run_config(folder: Path, model: str, dataset: str = "vtt-test/clips") -> Path:
    config = folder / "offline.yaml"
    config.write_text(
        f"trainer: seq2seq\nmodel_name_or_path: {model}\ndataset: {dataset}\noutput_dir: {folder / 'run'}\n"
    )
    return config


def vtt(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    # A timeout only as a guard: a hang on a network call is the failure these tests exist to catch.
    command = [sys.executable, "-m", "vtt.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def offline_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HOME=str(cache), HF_HUB_OFFLINE="1", HF_ENDPOINT=UNREACHABLE)
    env.pop("HF_HUB_CACHE", None)
    return env


@pytest.fixture(scope="module")
def staged(hub_repos, tmp_path_factory) -> Path:
    """`vtt stage` run against the fake Hub into a fresh cache; the Hub is gone when the tests use it."""
    work = tmp_path_factory.mktemp("stage")
    cache = work / "hf"
    hub = FakeHub(hub_repos)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1")
        done = vtt(
            "stage", "--config", str(run_config(work, "vtt-test/tiny-nllb")), "--cache", str(cache), env=env, cwd=work
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        hub.shutdown()
        hub.server_close()
    assert any(r.startswith("GET /vtt-test/tiny-nllb/resolve/") for r in hub.requests), hub.requests
    return cache


def test_stage_writes_a_manifest_of_the_model_and_dataset_without_unused_formats(staged):
    manifest = json.loads((staged / "vtt-staged.json").read_text())["repos"]
    model = manifest["model:vtt-test/tiny-nllb@main"]
    assert model["commit"] == COMMIT
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(model["files"])
    assert "tf_model.h5" not in model["files"] and "pytorch_model.bin" not in model["files"]
    assert manifest["dataset:vtt-test/clips@main"]["files"] == ["train.jsonl"]


def test_staged_model_loads_with_hub_offline_and_unreachable(staged, hub_repos, tmp_path):
    env = offline_env(staged)
    check = subprocess.run(
        [sys.executable, "-m", "vtt.check.offline", "--config", str(run_config(tmp_path, "vtt-test/tiny-nllb"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    load = (
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        "model = AutoModelForSeq2SeqLM.from_pretrained('vtt-test/tiny-nllb')\n"
        "tokenizer = AutoTokenizer.from_pretrained('vtt-test/tiny-nllb')\n"
        "print(sum(p.numel() for p in model.parameters()), len(tokenizer),\n"
        "      tokenizer.convert_tokens_to_ids('eng_Latn'))\n"
    )
    offline = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0, offline.stderr[-3000:]
    local = hub_repos[("model", "vtt-test/tiny-nllb")]
    here = subprocess.run(
        [sys.executable, "-c", load.replace("'vtt-test/tiny-nllb'", repr(str(local)))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offline.stdout == here.stdout  # the same weights and tokenizer as the folder that was served


def test_run_offline_with_a_model_never_staged_fails_at_once_naming_it_and_make_stage(staged, tmp_path):
    config = run_config(tmp_path, "vtt-test/never-staged")
    done = vtt("run", "--config", str(config), "--gpus", "1", env=offline_env(staged), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model vtt-test/never-staged" in done.stderr and "not in the cache" in done.stderr
    assert "vtt-test/clips" not in done.stderr  # the staged dataset is not listed as missing
    assert f"make stage CONFIG={config}" in done.stderr
    assert "Traceback" not in done.stderr


def test_trainer_started_offline_stops_before_loading_and_lists_what_is_missing(staged, tmp_path):
    config = run_config(tmp_path, "vtt-test/never-staged", dataset="other-org/never-staged-data")
    done = subprocess.run(
        [sys.executable, "-m", "vtt.train.seq2seq", "--config", str(config)],
        env=offline_env(staged),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "model vtt-test/never-staged" in done.stderr and "dataset other-org/never-staged-data" in done.stderr
    assert "make stage CONFIG=" in done.stderr and "Traceback" not in done.stderr


def test_offline_check_names_a_file_missing_from_a_staged_snapshot(staged, tmp_path):
    import shutil

    from vtt.check.offline import missing

    cache = tmp_path / "hf"
    shutil.copytree(staged, cache, symlinks=True)
    (cache / "hub" / "models--vtt-test--tiny-nllb" / "snapshots" / COMMIT / "model.safetensors").unlink()
    problems = missing({"model_name_or_path": "vtt-test/tiny-nllb", "dataset": "vtt-test/clips"}, cache / "hub")
    assert len(problems) == 1 and "model.safetensors" in problems[0], problems
