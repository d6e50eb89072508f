"""Elastic resume: a run stopped on 2 processes resumes on 1. vtt converts its ZeRO checkpoint to DeepSpeed's
universal checkpoint (once, atomically, rank 0 while the others wait) and loads it with load_universal.

    .venv/bin/pytest tests/test_universal.py

The tiny seq2seq model under ZeRO-2 on CPU (gloo): the optimizer states of a 2-process run are split in two, so
only a universal checkpoint loads on 1 process. The global batch is the same on both process counts (4: 2 x 2,
or 2 x 2 accumulated), so the resumed run sees the samples of the uninterrupted one and its losses follow them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, logged_losses, tiny_run, train

from vtt.exits import Exit
from vtt.files import CHECKPOINT_MARKER, checkpoint_marker, step_of
from vtt.train import checkpoints

CONFIG = "jobs/tiny-seq2seq.yaml"
STEPS = 30

pytestmark = pytest.mark.slow


def overrides(demo_inputs, out: Path) -> list[str]:
    return [*tiny_run(demo_inputs, "seq2seq"), "--max_steps", str(STEPS), "--output_dir", str(out)]


@pytest.fixture(scope="module")
def elastic(demo_inputs, tmp_path_factory) -> dict:
    """An uninterrupted 2-process run; a 2-process run stopped by SIGTERM to `vtt run`, then resumed on 1 process."""
    baseline = tmp_path_factory.mktemp("baseline")
    train(CONFIG, 2, overrides(demo_inputs, baseline))
    out = tmp_path_factory.mktemp("elastic")
    command = [sys.executable, "-m", "vtt.cli", "run", "--config", CONFIG, "--gpus", "2", *overrides(demo_inputs, out)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if "'loss'" in line:
            first.send_signal(signal.SIGTERM)
            break
    seen.append(first.stdout.read())
    stopped = checkpoints.newest_complete(out)
    assert first.wait() == Exit.STOPPED and stopped is not None, "".join(seen)[-4000:]
    copy = tmp_path_factory.mktemp("copy") / stopped.name  # for the conversion's own tests, before the resume
    shutil.copytree(stopped, copy)
    marker = checkpoint_marker(stopped)
    resumed = train(CONFIG, 1, overrides(demo_inputs, out)).stdout
    return {"out": out, "baseline": baseline, "stopped": stopped, "marker": marker, "log": resumed, "copy": copy}


def test_run_stopped_on_two_processes_resumes_on_one_from_its_universal_checkpoint(elastic):
    stopped, log = elastic["stopped"], elastic["log"]
    step = step_of(stopped)
    assert elastic["marker"]["world_size"] == 2 and 0 < step < STEPS
    assert f"vtt resume: converting {stopped}/global_step{step} to a universal checkpoint" in log
    universal = stopped / f"global_step{step}_universal"
    assert f"this run has 1: loading its universal checkpoint {universal}" in log
    assert f"vtt resume: resuming from {stopped} (step {step})" in log
    assert (stopped / "latest_universal").read_text() == universal.name
    assert not (stopped / checkpoints.UNIVERSAL_STAGING).exists()


def test_universal_resume_ends_at_the_global_step_with_the_losses_of_the_uninterrupted_run(elastic):
    state = (elastic["out"] / "trainer_state.json").read_text()
    assert '"global_step": 30' in state
    assert (elastic["out"] / "model.safetensors").exists()
    losses, baseline = logged_losses(elastic["out"]), logged_losses(elastic["baseline"])
    assert len(losses) == len(baseline) == STEPS
    step = step_of(elastic["stopped"])
    assert losses[:step] == baseline[:step]  # the 2-process steps, as logged before the stop
    # The restored weights give the loss of the same batch; the restored Adam moments and step count the same
    # first updates. One process accumulating 2 micro-batches sums in another order than 2 processes' all-reduce,
    # so the losses then drift apart slowly, as two runs do; they never restart from the first step's loss.
    assert losses[step] == pytest.approx(baseline[step], rel=1e-4)
    assert losses[step : step + 3] == pytest.approx(baseline[step : step + 3], rel=1e-2)
    assert max(losses[step:]) < losses[step - 1] and losses[-1] == pytest.approx(baseline[-1], rel=0.1)


def test_universal_conversion_runs_once_and_a_cut_short_one_is_redone_whole(elastic):
    folder = elastic["copy"]
    tag = checkpoints.zero_tag(folder)
    # A conversion killed after its rename, before the pointer: a universal folder nobody names.
    half = folder / f"{tag}_universal"
    half.mkdir()
    (half / "partial").write_text("cut short")
    (folder / checkpoints.UNIVERSAL_STAGING).mkdir()
    assert checkpoints.universal_tag(folder) is None
    assert checkpoints.to_universal(folder) == f"{tag}_universal"
    assert not (half / "partial").exists() and (half / "zero").is_dir()
    assert not (folder / checkpoints.UNIVERSAL_STAGING).exists()
    pointer = (folder / "latest_universal").stat().st_mtime_ns
    assert checkpoints.to_universal(folder) == f"{tag}_universal"  # the second call converts nothing
    assert (folder / "latest_universal").stat().st_mtime_ns == pointer


def test_universal_load_is_set_in_the_config_the_trainer_hands_deepspeed():
    training = SimpleNamespace(deepspeed="deepspeed/zero2.json", hf_deepspeed_config=SimpleNamespace(config={}))
    checkpoints.load_universal(training)
    assert training.hf_deepspeed_config.config == {"checkpoint": {"load_universal": True}}


def test_universal_conversion_that_fails_stops_every_rank_with_exit_2_and_the_converters_words(tmp_path, capsys):
    folder = tmp_path / "checkpoint-4"  # marked complete by 2 processes, but its ZeRO files are gone
    (folder / "global_step4").mkdir(parents=True)
    (folder / CHECKPOINT_MARKER).write_text(json.dumps({"step": 4, "world_size": 2}))
    training = SimpleNamespace(output_dir=str(tmp_path), deepspeed="deepspeed/zero2.json")
    with pytest.raises(SystemExit) as stopped:
        checkpoints.resume_point(SimpleNamespace(resume=True), training)
    said = capsys.readouterr().out
    assert stopped.value.code == Exit.BAD_INPUT
    assert f"vtt resume: error: converting {folder}/global_step4 to DeepSpeed's universal checkpoint failed" in said
    assert "Run on the process count that wrote it, or start fresh with --resume false" in said
    assert not (folder / checkpoints.UNIVERSAL_STAGING).exists() and checkpoints.universal_tag(folder) is None
