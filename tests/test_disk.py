"""Disk space on small tmpfs file systems: the pre-flight refusal, a skipped save, and a clean stop mid-run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_run
from transformers import TrainerControl, TrainerState

from vtt.check.disk import (
    SCRIPTS_AND_STATES,
    SaveGuard,
    checkpoint_bytes,
    estimate,
    small_files,
)
from vtt.config import parse_run_config
from vtt.exits import Exit
from vtt.models.size import parameter_count

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """mount_tmpfs(kb) -> a folder on a tmpfs of that size (needs root, as CI runs); unmounted afterwards."""
    mounted: list[Path] = []

    def mount_tmpfs(kb: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    yield mount_tmpfs
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def seq2seq_run(demo_inputs, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "jobs/tiny-seq2seq.yaml",
        *tiny_run(demo_inputs, "seq2seq"),
        "--output_dir",
        str(out),
        "--save_strategy",
        "steps",
        *extra,
    ]


def test_estimate_counts_the_newest_checkpoint_written_before_the_oldest_is_deleted(demo_inputs, tmp_path):
    argv = seq2seq_run(demo_inputs, tmp_path / "run", "--save_steps", "1", "--save_total_limit", "2")
    run, _, training = parse_run_config(["--max_steps", "10", *argv], world=1, use_cpu=True)
    params = parameter_count(run.model_name_or_path, "seq2seq")
    extra = small_files(run.model_name_or_path)  # tokenizer and configs: no weights
    assert 0 < extra < 50_000
    # ZeRO-2, fp32: weights + DeepSpeed's module copy (4 + 4) + fp32 master weights and Adam moments (12)
    checkpoint = params * 20 + extra + SCRIPTS_AND_STATES
    assert checkpoint_bytes(params, training, extra)[0] == checkpoint
    assert estimate(run, training, "seq2seq")[0].bytes == 3 * checkpoint


def test_guard_skips_a_save_that_would_not_fit_and_stops(small_disk):
    out = small_disk(256)
    args = SimpleNamespace(output_dir=str(out), save_total_limit=None)
    state = TrainerState(global_step=6, max_steps=100)

    roomy = SaveGuard(first_checkpoint_bytes=100_000)
    control = roomy.on_step_end(args, state, TrainerControl(should_save=True), model=None)
    assert control.should_save and not control.should_training_stop

    guard = SaveGuard(first_checkpoint_bytes=400_000)
    control = guard.on_step_end(args, state, TrainerControl(should_save=True), model=None)
    assert not control.should_save and control.should_training_stop
    assert "stopped at step 6: the next checkpoint needs 420.0 kB, 262.1 kB free" in guard.message
    with pytest.raises(SystemExit) as stop:
        guard.exit_if_stopped()
    assert stop.value.code == Exit.DISK_FULL


def vtt_run(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "vtt.cli", "run", "--gpus", "1", *argv]


@pytest.mark.slow
def test_trainer_refuses_to_start_when_checkpoints_cannot_fit(demo_inputs, small_disk):
    out = small_disk(4096) / "run"  # 3 checkpoints of ~3.6 MB will not fit in 4 MB
    argv = seq2seq_run(demo_inputs, out, "--save_steps", "1", "--save_total_limit", "2", "--max_steps", "4")
    done = subprocess.run(vtt_run(argv), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == Exit.DISK_FULL, done.stdout[-3000:]
    assert re.search(r"not enough disk space for this run: needs 1[01]\.\d MB, 4\.2 MB free", done.stdout)
    assert f"free on the file system of {out} (" in done.stdout
    assert "lower save_total_limit" in done.stdout and "set output_dir" in done.stdout
    assert not out.exists() or not any(out.iterdir())  # nothing was written


@pytest.mark.slow
def test_trainer_stops_cleanly_when_disk_fills_mid_run_and_last_checkpoint_loads(demo_inputs, small_disk):
    disk = small_disk(10 * 1024)  # room for 2 checkpoints of ~3.9 MB: the pre-flight check passes
    out = disk / "run"
    argv = seq2seq_run(demo_inputs, out, "--save_steps", "4", "--save_total_limit", "1", "--max_steps", "40")
    log = open(disk.parent / "train.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(vtt_run(argv), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    first = out / "checkpoint-4"
    deadline = time.monotonic() + 240
    while not (first / "trainer_state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # Someone else fills the disk: what is left is half a checkpoint.
    size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    with open(disk / "filler", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, shutil.disk_usage(disk).free - size // 2)
    code = proc.wait(timeout=300)
    log.close()
    output = (disk.parent / "train.log").read_text()
    assert code == Exit.DISK_FULL, output[-4000:]
    assert "the next checkpoint needs" in output and "do not requeue" in output
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(kept) == 1 and kept[0] in output  # the message names the checkpoint to resume from
    assert not (out / "model.safetensors").exists()  # no final model squeezed into the full disk
    checkpoint = out / kept[0]

    import torch
    from transformers import AutoModelForSeq2SeqLM

    AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    (states,) = checkpoint.glob("global_step*/*optim_states.pt")
    assert torch.load(states, weights_only=False, map_location="cpu")["optimizer_state_dict"]
    # The estimate the pre-flight check used is within 10% of what a checkpoint really took.
    run, _, training = parse_run_config(argv, world=1, use_cpu=True)
    params = parameter_count(run.model_name_or_path, "seq2seq")
    estimated = checkpoint_bytes(params, training, small_files(run.model_name_or_path))[0]
    assert abs(estimated - size) / size < 0.10, (estimated, size)


def test_check_with_disk_names_output_dir_when_the_run_cannot_fit(demo_inputs, small_disk):
    from vtt.check.deepspeed import check_run

    disk = small_disk(256)
    overrides = ["--model_name_or_path", str(demo_inputs["seq2seq"]), "--output_dir", str(disk / "run")]
    assert check_run("jobs/tiny-seq2seq.yaml", 1, overrides=overrides).ok  # without --disk: not measured
    report = check_run("jobs/tiny-seq2seq.yaml", 1, overrides=overrides, disk=True)
    [problem] = report.errors
    assert problem.key == "output_dir" and problem.file == "jobs/tiny-seq2seq.yaml"
    assert "not enough disk space" in problem.detail and "save_total_limit" in problem.fix
