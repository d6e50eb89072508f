"""Elastic resume: a run stopped on 2 processes resumes on 1, is stopped there and resumes on 2 again. Each time
vtt converts the newest ZeRO checkpoint, written at the other world size, to DeepSpeed's universal checkpoint (once,
atomically, rank 0 while the others wait) and loads it with load_universal. On the test Slurm, a job stopped on 2
GPUs and requeued onto 1 carries on by itself.

    .venv/bin/pytest tests/test_universal.py      (the Slurm test needs root, slurm-wlm and munge, as test_slurm_jobs)

The tiny seq2seq model under ZeRO-2 on CPU (gloo): the optimizer states of a 2-process run are split in two, and
those of a 1-process run are whole, so each change of process count loads only as a universal checkpoint. The
global batch is the same on both process counts (4: 2 x 2, or 2 x 2 accumulated), so the resumed run sees the
samples of the uninterrupted one and its losses follow them. Every run saves checkpoint-30 at its last step, so
the optimizer's own step count (AdamW's `step` in each rank's ZeRO states) is read at the end too.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, logged_losses, tiny_run, train

from vtt.exits import Exit
from vtt.files import CHECKPOINT_MARKER, checkpoint_marker, step_of
from vtt.train import checkpoints

CONFIG = "jobs/tiny-seq2seq.yaml"
STEPS = 30

pytestmark = pytest.mark.slow


def overrides(demo_inputs, out: Path) -> list[str]:
    saves = ["--save_strategy", "steps", "--save_steps", str(STEPS)]  # checkpoint-30: the optimizer state at the end
    return [*tiny_run(demo_inputs, "seq2seq"), "--max_steps", str(STEPS), *saves, "--output_dir", str(out)]


def stopped_after_a_loss(demo_inputs, gpus: int, out: Path) -> tuple[Path, str]:
    """`vtt run` on `gpus` processes, stopped by SIGTERM once it logs a loss; its newest checkpoint and its log."""
    command = [sys.executable, "-m", "vtt.cli", "run", "--config", CONFIG, "--gpus", str(gpus)]
    run = subprocess.Popen(
        [*command, *overrides(demo_inputs, out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in run.stdout:
        seen.append(line)
        if "'loss'" in line:
            run.send_signal(signal.SIGTERM)
            break
    seen.append(run.stdout.read())
    stopped = checkpoints.newest_complete(out)
    assert run.wait() == Exit.STOPPED and stopped is not None, "".join(seen)[-4000:]
    return stopped, "".join(seen)


def optimizer_steps(folder: Path) -> list[set[int]]:
    """AdamW's step counts in each rank's ZeRO optimizer state of a checkpoint (one per parameter group)."""
    steps = []
    for path in sorted((folder / checkpoints.zero_tag(folder)).glob("*_optim_states.pt")):
        state = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        steps.append({int(group["step"]) for group in state["base_optimizer_state"]["state"].values()})
    return steps


@pytest.fixture(scope="module")
def baseline(demo_inputs, tmp_path_factory) -> Path:
    """An uninterrupted 2-process run."""
    out = tmp_path_factory.mktemp("baseline")
    train(CONFIG, 2, overrides(demo_inputs, out))
    return out


@pytest.fixture(scope="module")
def elastic(demo_inputs, baseline, tmp_path_factory) -> dict:
    """A 2-process run stopped by SIGTERM to `vtt run`, resumed on 1 process and stopped again, then resumed on 2
    processes to the end."""
    out = tmp_path_factory.mktemp("elastic")
    stopped, _ = stopped_after_a_loss(demo_inputs, 2, out)
    copy = tmp_path_factory.mktemp("copy") / stopped.name  # for the conversion's own tests, before the resume
    shutil.copytree(stopped, copy)
    marker = checkpoint_marker(stopped)
    again, on_one = stopped_after_a_loss(demo_inputs, 1, out)
    on_two = train(CONFIG, 2, overrides(demo_inputs, out)).stdout
    return {
        "out": out, "baseline": baseline, "stopped": stopped, "marker": marker, "log": on_one, "copy": copy,
        "again": again, "again_marker": checkpoint_marker(again), "log_two": on_two,
    }  # fmt: skip


def test_the_tiny_nllb_computes_the_same_training_loss_whatever_the_random_state(demo_inputs):
    """The losses of runs on different process counts are compared step by step, and their ranks draw different
    random numbers: nothing random may enter a training step (M2M100's default LayerDrop did, now and then)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(demo_inputs["seq2seq"]).train()
    tokenizer = AutoTokenizer.from_pretrained(demo_inputs["seq2seq"])
    batch = tokenizer(["a red square moves left"] * 2, text_target=["it moves"] * 2, return_tensors="pt")
    losses = set()
    for seed in range(20):
        torch.manual_seed(seed)
        losses.add(model(**batch).loss.item())
    assert len(losses) == 1, sorted(losses)


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


def test_run_stopped_again_on_one_process_resumes_on_two_from_a_universal_checkpoint_of_its_own(elastic):
    # The 1-process start saved an ordinary ZeRO checkpoint (load_universal was for its start only), marked with
    # world size 1: the next start on 2 processes converts that one, not the older one it resumed from.
    stopped, again, log = elastic["stopped"], elastic["again"], elastic["log_two"]
    step = step_of(again)
    assert elastic["again_marker"]["world_size"] == 1 and step_of(stopped) < step < STEPS
    assert f"vtt resume: converting {again}/global_step{step} to a universal checkpoint" in log
    universal = again / f"global_step{step}_universal"
    assert f"{again} was written by 1 process(es), this run has 2: loading its universal checkpoint {universal}" in log
    assert f"vtt resume: resuming from {again} (step {step})" in log
    assert log.count("vtt resume: converting") == 1 and (again / "latest_universal").read_text() == universal.name


def test_optimizer_step_count_goes_on_across_both_changes_of_process_count(elastic):
    out, first, again = elastic["out"], step_of(elastic["stopped"]), step_of(elastic["again"])
    assert optimizer_steps(elastic["stopped"]) == [{first}, {first}]  # 2 ranks' halves of the states
    assert optimizer_steps(elastic["again"]) == [{again}]  # restored from the universal checkpoint, counted on
    final = out / f"checkpoint-{STEPS}"
    assert checkpoint_marker(final)["world_size"] == 2 and optimizer_steps(final) == [{STEPS}, {STEPS}]
    assert optimizer_steps(elastic["baseline"] / f"checkpoint-{STEPS}") == [{STEPS}, {STEPS}]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == STEPS


def test_universal_resume_ends_at_the_global_step_with_the_losses_of_the_uninterrupted_run(elastic):
    assert (elastic["out"] / "model.safetensors").exists()
    losses, baseline = logged_losses(elastic["out"]), logged_losses(elastic["baseline"])
    assert len(losses) == len(baseline) == STEPS
    first, again = step_of(elastic["stopped"]), step_of(elastic["again"])
    assert losses[:first] == baseline[:first]  # the 2-process steps, as logged before the stop
    # The restored weights give the loss of the same batch; the restored Adam moments and step count the same
    # first updates. One process accumulating 2 micro-batches sums in another order than 2 processes' all-reduce,
    # so the losses then drift apart slowly, as two runs do; they never restart from the first step's loss.
    assert losses[first] == pytest.approx(baseline[first], rel=1e-4)
    assert losses[first:again] == pytest.approx(baseline[first:again], rel=1e-2)
    # Back on 2 processes: the weights and states of the 1-process steps, so the same small drift, no jump.
    assert losses[again : again + 3] == pytest.approx(baseline[again : again + 3], rel=1e-2)
    assert max(losses[first:]) < losses[first - 1] and losses[-1] == pytest.approx(baseline[-1], rel=0.1)


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


def job_record(job_id: str, env: dict[str, str]) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True).stdout


def test_slurm_job_stopped_on_two_gpus_and_requeued_onto_one_carries_on_from_a_universal_checkpoint(
    slurm, demo_inputs, baseline, tmp_path
):
    """The job asks for 2 GPUs; warned mid-run, it checkpoints and requeues itself. While it waits, its request
    becomes 1 GPU (scontrol update: the test Slurm's stand-in for a requeue that lands on a node with another GPU
    count). The job script takes the process count from the allocation, so the next start runs 1 process, and
    vtt converts and resumes by itself: nobody runs a command between the two starts."""
    from test_slurm_jobs import DONE, job_state, make_submit, submitted

    out = tmp_path / "run"
    done = make_submit(
        slurm, CLUSTER="ci", TRAINER="tiny-seq2seq", GPUS="2", ARGS=" ".join(overrides(demo_inputs, out))
    )
    job_id, log = submitted(done)
    deadline = time.monotonic() + 900
    while not (log.exists() and "'loss'" in log.read_text()):
        assert time.monotonic() < deadline, f"job {job_id} never logged a loss"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm, check=True)
    # Requeued: pending again, eligible some seconds later (cred_expire), the time to change its request.
    while True:
        record = job_record(job_id, slurm)
        state = re.search(r"JobState=(\S+)", record).group(1)
        if ("Restarts=1 " in record and state in ("PENDING", "RUNNING")) or state in DONE:
            break
        assert time.monotonic() < deadline, f"job {job_id} was not requeued:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    assert state == "PENDING", f"job {job_id} is {state}, not waiting to start again:\n{log.read_text()[-3000:]}"
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TresPerNode=gres:gpu:1"], env=slurm, check=True)
    state = job_state(job_id, slurm, log=log)
    text = log.read_text()
    assert state == "COMPLETED", text[-4000:]
    assert "Restarts=1" in job_record(job_id, slurm)
    step = int(re.search(r"saving a checkpoint at step (\d+) of", text).group(1))
    assert 0 < step < STEPS and "requeued (restart 1 of at most 3)" in text
    first, second = text.split("requeued (restart 1", 1)
    assert re.search(r"^nodes: \S+; 2 GPU\(s\) each", first, re.M)
    assert re.search(r"^nodes: \S+; 1 GPU\(s\) each", second, re.M)
    stopped = out / f"checkpoint-{step}"
    assert f"vtt resume: converting {stopped}/global_step{step} to a universal checkpoint" in second
    universal = stopped / f"global_step{step}_universal"
    assert f"{stopped} was written by 2 process(es), this run has 1: loading its universal checkpoint {universal}" in (
        second
    )
    assert f"vtt resume: resuming from {stopped} (step {step})" in second
    final = out / f"checkpoint-{STEPS}"
    assert checkpoint_marker(final)["world_size"] == 1 and optimizer_steps(final) == [{STEPS}]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == STEPS
    losses, expected = logged_losses(out), logged_losses(baseline)
    assert len(losses) == STEPS and losses[:step] == expected[:step]
    assert losses[step] == pytest.approx(expected[step], rel=1e-4)
