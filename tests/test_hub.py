"""Pushing to the Hub against a local stand-in (tests/fake_hub.py): retries, the token kept secret, rank 0 only."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run
from fake_hub import FakeHub

from vtt.exits import Exit

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_vttTestSecretToken0123456789"


def hub_env(hub: FakeHub | None, tmp_path: Path, token: str | None = TOKEN) -> dict[str, str]:
    """The environment of a user pointed at the stand-in Hub; HF_HOME is empty, so no saved login exists."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_USER_ID="tester", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    env["HF_ENDPOINT"] = hub.endpoint if hub else "http://127.0.0.1:9"  # port 9: nothing listens (discard)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return env


def vtt(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vtt.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def assert_token_nowhere(done: subprocess.CompletedProcess, *folders: Path) -> None:
    assert TOKEN not in done.stdout + done.stderr
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), f"the token was written into {path}"


@pytest.fixture
def folder(demo_inputs, tmp_path) -> Path:
    """A copy of the tiny NLLB (a push writes vtt-push.json into the folder it uploads)."""
    shutil.copytree(demo_inputs["seq2seq"], tmp_path / "model")
    return tmp_path / "model"


def test_push_retries_rate_limited_hub_and_never_prints_the_token(folder, tmp_path):
    with FakeHub(TOKEN) as hub:
        hub.fail = {"create": [429, 503]}
        done = vtt(["push", str(folder), "--repo-id", "tiny-nllb", "--backoff", "0.05"], hub_env(hub, tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert hub.calls("create") == [429, 503, 200]
    uploaded = hub.files["model:tester/tiny-nllb"]
    assert uploaded["config.json"] == (folder / "config.json").read_bytes()
    assert "model.safetensors" in uploaded
    assert hub.repos["model:tester/tiny-nllb"]["private"] is True
    assert_token_nowhere(done, folder)


def test_push_that_keeps_failing_prints_retry_command_and_leaves_files(folder, tmp_path):
    before = digests(folder)
    with FakeHub(TOKEN) as hub:
        hub.fail = {"create": [503] * 3}
        env = hub_env(hub, tmp_path)
        done = vtt(["push", str(folder), "--repo-id", "tiny-nllb", "--retries", "3", "--backoff", "0.05"], env)
        assert done.returncode == Exit.PUSH_FAILED, done.stderr[-3000:]
        assert f"vtt push {folder}" in done.stderr
        assert hub.calls("create") == [503, 503, 503]
        after = digests(folder)
        assert after.pop("vtt-push.json")
        assert after == before
        # The printed command retries the same upload: the repo id was recorded beside the files.
        again = vtt(["push", str(folder)], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "model.safetensors" in hub.files["model:tester/tiny-nllb"]
    assert_token_nowhere(done, folder)
    assert_token_nowhere(again, folder)


def test_push_refuses_a_missing_token_with_how_to_fix(folder, tmp_path):
    done = vtt(["push", str(folder), "--repo-id", "x"], hub_env(None, tmp_path, token=None))
    assert done.returncode == 2
    assert "no token was found: export HF_TOKEN" in done.stderr


def train(overrides: list[str], env: dict[str, str], gpus: int = 1) -> subprocess.CompletedProcess:
    command = ["run", "--config", "jobs/tiny-seq2seq.yaml", "--gpus", str(gpus), *overrides]
    return vtt(command, env)


def seq2seq_overrides(demo_inputs, out: Path) -> list[str]:
    return [
        *tiny_run(demo_inputs, "seq2seq"),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--push_to_hub",
        "true",
    ]


@pytest.mark.slow
def test_invalid_token_stops_every_rank_before_training(demo_inputs, tmp_path):
    out = tmp_path / "run"
    with FakeHub("hf_the_real_one") as hub:
        done = train(seq2seq_overrides(demo_inputs, out), hub_env(hub, tmp_path), gpus=2)
    assert done.returncode == Exit.BAD_INPUT, done.stdout[-3000:]
    assert "was refused (401 Unauthorized)" in done.stdout + done.stderr
    assert hub.calls("whoami") == [401]  # rank 0 asked; rank 1 waited for its answer
    assert not (out / "model.safetensors").exists()
    assert_token_nowhere(done)


@pytest.mark.slow
def test_trainer_pushes_final_model_with_card_from_rank_zero_only(demo_inputs, tmp_path):
    out = tmp_path / "run"
    overrides = [*seq2seq_overrides(demo_inputs, out), "--save_strategy", "steps", "--save_steps", "1"]
    with FakeHub(TOKEN) as hub:
        hub.fail = {"create": [429]}
        done = train(overrides, hub_env(hub, tmp_path), gpus=2)
    assert done.returncode == 0, done.stdout[-4000:]
    assert hub.calls("whoami") == [200] and hub.calls("commit") == [200]
    assert hub.calls("create") == [429, 200]
    uploaded = hub.files["model:tester/video-text-model"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(uploaded)
    assert not [name for name in uploaded if name.startswith("checkpoint-")]
    card = uploaded["README.md"].decode()
    assert "learning_rate: 0.003" in card and "max_steps: 2" in card  # the run config, with overrides
    assert "local_rank" not in card
    assert "train_samples: 8" in card  # the data
    assert "| train_loss |" in card  # the final metrics
    assert hub.repos["model:tester/video-text-model"]["private"] is True
    assert_token_nowhere(done, out)


@pytest.mark.slow
def test_failed_trainer_push_keeps_model_and_prints_the_retry_command(demo_inputs, tmp_path):
    out = tmp_path / "run"
    overrides = [*seq2seq_overrides(demo_inputs, out), "--hub_model_id", "someone/else"]
    with FakeHub(TOKEN) as hub:
        hub.fail = {"create": [403]}  # no write access to that namespace: not worth retrying
        env = hub_env(hub, tmp_path)
        done = train(overrides, env)
        assert done.returncode == Exit.PUSH_FAILED, done.stdout[-4000:]
        assert f"vtt push {out}" in done.stdout + done.stderr
        from transformers import AutoModelForSeq2SeqLM

        AutoModelForSeq2SeqLM.from_pretrained(out)  # the local model is whole
        again = vtt(["push", str(out)], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "| train_loss |" in hub.files["model:someone/else"]["README.md"].decode()
    assert_token_nowhere(done, out)


def test_prepared_dataset_goes_to_a_private_dataset_repo_named_as_the_seed(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "prepared"
    Dataset.from_list([{"source": "what colour?", "target": "red"}]).save_to_disk(str(folder))
    code = f"from vtt.after.hub import push_dataset; print(push_dataset({str(folder)!r}))"
    with FakeHub(TOKEN) as hub:
        env = hub_env(hub, tmp_path)
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        again = vtt(["push", str(folder)], env)  # the retry command finds the dataset repo recorded
    assert again.returncode == 0, again.stderr[-3000:]
    assert hub.repos["dataset:tester/video-text-dataset"]["private"] is True
    assert {"dataset_info.json", "state.json"} <= set(hub.files["dataset:tester/video-text-dataset"])
    assert hub.calls("commit") == [200, 200]
    assert_token_nowhere(done, folder)
