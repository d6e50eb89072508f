"""Preemption: a signal stops training with a full checkpoint, the job requeues itself, every start resumes,
and an interrupted run ends exactly where an uninterrupted one does.

    .venv/bin/pytest tests/test_preempt.py      (the Slurm test needs root, slurm-wlm and munge, as test_slurm_jobs)

Every run is the tiny seq2seq model on 2 processes (DeepSpeed ZeRO-2 splits the optimizer states per process,
and the ranks must agree on when to stop) for STEPS optimizer steps, compared with one uninterrupted run of the
same seed: weights bitwise, losses exactly (CPU, gloo: the same operations in the same order give the same bits).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from conftest import ROOT, logged_losses, tiny_run, train

from vtt.cluster.jobs import preflight, render
from vtt.cluster.profiles import load_profile
from vtt.exits import Exit
from vtt.files import CHECKPOINT_MARKER, checkpoint_marker, step_of
from vtt.files import checkpoints as files_checkpoints
from vtt.train import checkpoints

CONFIG = "jobs/tiny-seq2seq.yaml"
STEPS = 40
SAVE_STEPS = 20  # run 2 of the local sequence is killed while it writes checkpoint-20
GPUS = 2


def overrides(demo_inputs, out: Path) -> list[str]:
    return [
        *tiny_run(demo_inputs, "seq2seq"),
        *("--max_steps", str(STEPS), "--output_dir", str(out)),
    ]


def start(arguments: list[str]) -> subprocess.Popen:
    """`vtt run` as a user types it, its output readable line by line."""
    command = [sys.executable, "-m", "vtt.cli", "run", "--config", CONFIG, "--gpus", str(GPUS), *arguments]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(proc: subprocess.Popen, text: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the run ended (exit {proc.wait()}) before printing {text!r}:\n{''.join(seen)[-4000:]}")


def weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def baseline(demo_inputs, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("baseline")
    train(CONFIG, GPUS, overrides(demo_inputs, out))
    return out


@pytest.fixture(scope="module")
def local(demo_inputs, tmp_path_factory) -> dict:
    """Three `vtt run` starts of one run folder: SIGTERM mid-training; killed while writing a checkpoint; to the end.

    Run 2's save of step SAVE_STEPS is held at a known point for the kill: its trainer_state.json is a FIFO
    (opening a FIFO for writing waits for a reader), made after run 2 resumed and long before that step.
    By then the model, optimizer and DeepSpeed states and RNG states of the checkpoint are written.
    """
    out = tmp_path_factory.mktemp("local")
    saves = ["--save_strategy", "steps", "--save_steps", str(SAVE_STEPS), "--save_total_limit", "1"]
    found: dict = {"out": out}

    # The same save settings in every start: a resumed Trainer takes save_steps from the checkpoint's state.
    first = start([*overrides(demo_inputs, out), *saves])
    log = read_until(first, "'loss'")
    first.send_signal(signal.SIGTERM)
    found["first"] = {"code": first.wait(), "log": log + first.stdout.read()}
    found["stopped"] = checkpoints.newest_complete(out)
    assert found["stopped"] is not None, found["first"]["log"][-4000:]
    found["stopped_marker"] = checkpoint_marker(found["stopped"])
    found["stopped_files"] = {str(p.relative_to(found["stopped"])) for p in found["stopped"].rglob("*")}
    found["stopped_state"] = json.loads((found["stopped"] / "trainer_state.json").read_text())

    second = start([*overrides(demo_inputs, out), *saves])
    log = read_until(second, "vtt resume: resuming from")
    staging = out / f"checkpoint-{SAVE_STEPS}"  # the Trainer writes the checkpoint in place
    staging.mkdir()
    os.mkfifo(staging / "trainer_state.json")
    deadline = time.monotonic() + 600
    while not all((staging / f"rng_state_{rank}.pth").exists() for rank in range(GPUS)):
        assert second.poll() is None and time.monotonic() < deadline, "run 2 never reached its save"
        time.sleep(0.05)
    time.sleep(0.5)
    tree = [psutil.Process(second.pid), *psutil.Process(second.pid).children(recursive=True)]
    for process in tree:
        process.kill()  # as a node failure would: no handler runs
    found["second"] = {"code": second.wait(), "log": log + second.stdout.read()}
    found["after_kill"] = sorted(p.name for p in out.iterdir())
    found["staged_files"] = sorted(p.name for p in staging.iterdir())

    found["third"] = {"log": train(CONFIG, GPUS, [*overrides(demo_inputs, out), *saves]).stdout}
    return found


@pytest.mark.slow
def test_sigterm_to_vtt_run_saves_a_checkpoint_mid_training_and_exits_75(local):
    step = step_of(local["stopped"])
    assert local["first"]["code"] == Exit.STOPPED, local["first"]["log"][-3000:]
    assert 0 < step < SAVE_STEPS, "the signal must stop the run before run 2's first save"
    assert f"vtt preempt: SIGUSR1 received: saving a checkpoint at step {step} of {STEPS}" in local["first"]["log"]
    assert local["stopped_marker"]["step"] == step and local["stopped_marker"]["world_size"] == GPUS


@pytest.mark.slow
def test_stopped_checkpoint_holds_model_optimizer_scheduler_rng_and_trainer_state(local):
    step = step_of(local["stopped"])
    files = local["stopped_files"]
    for name in ("model.safetensors", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"):
        assert name in files
    # DeepSpeed's own states: each process's ZeRO-2 optimizer partition and the module states.
    for rank in range(GPUS):
        assert f"global_step{step}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
    assert f"global_step{step}/mp_rank_00_model_states.pt" in files
    assert local["stopped_state"]["global_step"] == step


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_the_previous_one_and_the_next_start_resumes_from_it(local):
    step = step_of(local["stopped"])
    assert local["second"]["code"] != 0
    # The half-written checkpoint-20 has no marker; the stopped one is intact (the limit of 1 applies to complete ones).
    assert f"checkpoint-{SAVE_STEPS}" in local["after_kill"] and f"checkpoint-{step}" in local["after_kill"]
    assert "model.safetensors" in local["staged_files"] and CHECKPOINT_MARKER not in local["staged_files"]
    third = local["third"]["log"]
    removed = local["out"] / f"checkpoint-{SAVE_STEPS}"
    assert f"vtt resume: removed {removed}: a save that did not finish (no {CHECKPOINT_MARKER})" in third
    assert f"vtt resume: resuming from {local['stopped']} (step {step})" in third


@pytest.mark.slow
def test_only_the_newest_save_total_limit_checkpoints_are_kept_beside_the_final_model(local):
    out = local["out"]
    assert [p.name for p in files_checkpoints(out)] == [f"checkpoint-{STEPS}"]
    assert checkpoint_marker(out / f"checkpoint-{STEPS}")["step"] == STEPS
    assert (out / "model.safetensors").exists()


@pytest.mark.slow
def test_interrupted_local_run_ends_with_the_weights_and_losses_of_an_uninterrupted_run(local, baseline):
    # Equal losses at every step: after each resume the steps saw the samples the uninterrupted run saw.
    assert logged_losses(local["out"]) == logged_losses(baseline)
    assert len(logged_losses(baseline)) == STEPS
    assert weights(local["out"]) == weights(baseline)


@pytest.mark.slow
def test_resume_on_another_process_count_converts_to_a_universal_checkpoint_world_size(local, monkeypatch, capsys):
    folder = local["out"] / f"checkpoint-{STEPS}"  # written by 2 processes
    config = SimpleNamespace(config={})  # what the Trainer hands deepspeed.initialize
    training = SimpleNamespace(output_dir=str(local["out"]), deepspeed="deepspeed/zero2.json")
    training.hf_deepspeed_config = config
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert checkpoints.resume_point(SimpleNamespace(resume=True), training) == str(folder)
    said = capsys.readouterr().out
    universal = folder / f"global_step{STEPS}_universal"
    assert f"{folder} was written by 2 process(es), this run has 1: loading its universal checkpoint {universal}" in (
        said
    )
    assert config.config == {"checkpoint": {"load_universal": True}} and (universal / "zero").is_dir()
    assert checkpoints.resume_point(SimpleNamespace(resume=False), training) is None  # --resume false: step 0


def test_checkpoint_folder_without_marker_is_never_resumed_from(tmp_path):
    complete, half = tmp_path / "checkpoint-10", tmp_path / "checkpoint-20"
    complete.mkdir()
    half.mkdir()
    (complete / CHECKPOINT_MARKER).write_text(json.dumps({"step": 10, "world_size": 1}))
    (half / "model.safetensors").write_text("half")
    assert checkpoints.newest_complete(tmp_path) == complete
    assert checkpoints.remove_incomplete(tmp_path) == [half] and not half.exists()


@pytest.mark.slow
def test_slurm_job_warned_mid_training_requeues_itself_resumes_and_matches_an_uninterrupted_run(
    slurm, demo_inputs, baseline, tmp_path
):
    from test_slurm_jobs import job_state, make_submit, submitted

    out = tmp_path / "run"
    done = make_submit(
        slurm, CLUSTER="ci", TRAINER="tiny-seq2seq", GPUS=str(GPUS), ARGS=" ".join(overrides(demo_inputs, out))
    )
    job_id, log = submitted(done)
    deadline = time.monotonic() + 900
    while not (log.exists() and "'loss'" in log.read_text()):
        assert time.monotonic() < deadline, f"job {job_id} never logged a loss"
        time.sleep(0.2)
    # The warning Slurm sends before the time limit (--signal=B:USR1@N), sent now: to the batch script only.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm, check=True)
    state = job_state(job_id, slurm, log=log)
    text = log.read_text()
    assert state == "COMPLETED", text[-4000:]
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=slurm, capture_output=True, text=True)
    assert "Restarts=1" in shown.stdout
    step = int(re.search(r"saving a checkpoint at step (\d+) of", text).group(1))
    assert 0 < step < STEPS
    assert "requeued (restart 1 of at most 3)" in text
    assert f"vtt resume: resuming from {out}/checkpoint-{step} (step {step})" in text
    assert len(re.findall(r"^start: ", text, re.MULTILINE)) == 2  # one log, appended by both starts
    assert logged_losses(out) == logged_losses(baseline)
    assert weights(out) == weights(baseline)


def test_rendered_slurm_job_asks_for_the_warning_signal_and_is_requeueable(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    text = render(preflight(load_profile("jobs/clusters/ci.yaml"), CONFIG, 1))
    for directive in ("#SBATCH --signal=B:USR1@120\n", "#SBATCH --requeue\n", "#SBATCH --open-mode=append\n"):
        assert directive in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and "((RESTARTS < 3))" in text
    profile = tmp_path / "short.yaml"
    profile.write_text("gpus_per_node: 1\nsignal_seconds: 300\nmax_requeues: 10\n")
    text = render(preflight(load_profile(profile), CONFIG, 1))
    assert "#SBATCH --signal=B:USR1@300\n" in text and "((RESTARTS < 10))" in text


def test_profile_rejects_a_warning_signal_slurm_cannot_send(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("gpus_per_node: 1\nsignal_seconds: 0\n")
    with pytest.raises(ValueError, match=r"bad.yaml: signal_seconds = 0: give 1 to 65535 seconds"):
        load_profile(profile)


def test_job_script_requeues_by_the_one_exit_table():
    text = render(preflight(load_profile("jobs/clusters/ci.yaml"), "jobs/tiny-seq2seq.yaml", 1))
    never = sorted(code for code in Exit if code and not code.requeue)
    assert f"    {'|'.join(str(int(code)) for code in never)})" in text
    assert f"$STATUS -eq {int(Exit.STOPPED)}" in text and Exit.STOPPED.requeue
