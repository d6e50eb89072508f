"""Jobs on a real Slurm started on this machine (fixture `slurm`): rendered scripts are accepted, the tiny
trainers' jobs submitted with `make submit CLUSTER=ci` complete, a 2-node job trains through srun -> deepspeed
--no_ssh with the losses of a 1-node run, and a job that fails ends FAILED with its error in the log.

    .venv/bin/pytest tests/test_slurm_jobs.py      (as root, with slurm-wlm, munge, shellcheck installed)
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, logged_losses, tiny_run, train

from vtt.cluster.profiles import load_profile

pytestmark = pytest.mark.slow
VENV = Path(sys.executable).parent.parent
SLURM_PROFILES = [
    path for path in sorted((ROOT / "jobs" / "clusters").glob("*.yaml")) if load_profile(path).scheduler == "slurm"
]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def make_submit(env: dict[str, str], **variables: str) -> subprocess.CompletedProcess:
    """`make submit ...` as a user types it. `-o` keeps make from reinstalling the test's own venv."""
    command = ["make", "--no-print-directory", "-o", f"{VENV}/.installed", "submit", f"VENV={VENV}"]
    command += [f"{name}={value}" for name, value in variables.items()]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done


def submitted(done: subprocess.CompletedProcess) -> tuple[str, Path]:
    job_id = re.search(r"submitted job (\d+)", done.stdout).group(1)
    log = re.search(r"^log:\s+(\S+)", done.stdout, re.MULTILINE).group(1)
    return job_id, ROOT / log


def job_state(job_id: str, env: dict[str, str], timeout: float = 900, log: Path | None = None) -> str:
    """The job's final state, from scontrol (no accounting database here; MinJobAge keeps it visible).

    A job still unfinished at the timeout is cancelled (it must not load the rest of the suite) and the
    failure carries what tells why: the job's record, the nodes' states and reasons, and its log's tail.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
        state = re.search(r"JobState=(\S+)", shown.stdout)
        if state and state.group(1) in DONE:
            return state.group(1)
        time.sleep(2)
    nodes = subprocess.run(["sinfo", "-N", "-o", "%N %T %E"], env=env, capture_output=True, text=True)
    ps = ["ps", "-eo", "pid,ppid,stat,etime,time,args", "--forest"]
    processes = subprocess.run(ps, capture_output=True, text=True, timeout=30)
    subprocess.run(["scancel", job_id], env=env)
    tail = log.read_text()[-4000:] if log and log.exists() else f"(no log at {log})"
    raise AssertionError(
        f"job {job_id} did not finish in {timeout} s\n{shown.stdout}\n{nodes.stdout}\n"
        f"{processes.stdout[-6000:]}\nlog tail:\n{tail}"
    )


@pytest.fixture(scope="module")
def jobs(slurm, demo_inputs, tmp_path_factory):
    """Three jobs submitted at once (they overlap on the test cluster's two nodes), then waited for."""
    out = tmp_path_factory.mktemp("slurm-runs")
    inputs = " ".join(tiny_run(demo_inputs, "llava"))
    seq2seq = " ".join(tiny_run(demo_inputs, "seq2seq"))
    bad = f"--model_name_or_path {demo_inputs['llava']} --dataset {out}/missing/manifest.jsonl"
    submissions = {
        "seq2seq": make_submit(
            slurm, CLUSTER="ci", TRAINER="tiny-seq2seq", GPUS="1", ARGS=f"{seq2seq} --output_dir {out}/seq2seq"
        ),
        "llava-2-nodes": make_submit(
            slurm, CLUSTER="ci", TRAINER="tiny-llava", GPUS="1", NODES="2", ARGS=f"{inputs} --output_dir {out}/llava"
        ),
        "bad-data": make_submit(
            slurm, CLUSTER="ci", TRAINER="tiny-llava", GPUS="1", ARGS=f"{bad} --output_dir {out}/bad"
        ),
    }
    results = {}
    for name, done in submissions.items():
        job_id, log = submitted(done)
        results[name] = {"id": job_id, "log": log, "stdout": done.stdout, "state": job_state(job_id, slurm, log=log)}
    results["out"] = out
    return results


def test_make_submit_prints_job_id_log_and_how_to_follow(jobs):
    job = jobs["seq2seq"]
    assert f"follow: squeue -j {job['id']}; tail -f logs/vtt-tiny-seq2seq-{job['id']}.out" in job["stdout"]
    assert job["log"].exists()


def test_seq2seq_job_completes_and_saves_its_model(jobs):
    job = jobs["seq2seq"]
    assert job["state"] == "COMPLETED", job["log"].read_text()[-3000:]
    assert (jobs["out"] / "seq2seq" / "model.safetensors").exists()
    assert (jobs["out"] / "seq2seq" / "config.json").exists()
    log = job["log"].read_text()
    assert re.search(r"^start: \S+ job \d+", log, re.MULTILINE) and re.search(r"^end: \S+ exit 0$", log, re.MULTILINE)


def test_llava_job_on_two_nodes_runs_one_launcher_per_node_and_saves_its_model(jobs):
    job = jobs["llava-2-nodes"]
    log = job["log"].read_text()
    assert job["state"] == "COMPLETED", log[-3000:]
    assert "nodes: vtt1 vtt2; 1 GPU(s) each; master vtt1:" in log
    # One deepspeed launcher per node, each with its own rank, one process each (gloo world of 2).
    assert "--node_rank=0" in log and "--node_rank=1" in log
    assert log.count("nnodes=2, num_local_procs=1") == 2
    assert (jobs["out"] / "llava" / "model.safetensors").exists()


def test_two_node_losses_equal_a_one_node_two_process_run(jobs, demo_inputs, tmp_path):
    assert jobs["llava-2-nodes"]["state"] == "COMPLETED"
    local = tmp_path / "local"
    overrides = tiny_run(demo_inputs, "llava")
    train("jobs/tiny-llava.yaml", 2, [*overrides, "--output_dir", str(local)])
    two_nodes = logged_losses(jobs["out"] / "llava")
    assert len(two_nodes) == 12
    assert two_nodes == logged_losses(local)


def test_job_with_missing_data_ends_failed_with_the_error_in_its_log(jobs):
    job = jobs["bad-data"]
    log = job["log"].read_text()
    assert job["state"] == "FAILED"
    assert f"{jobs['out']}/missing/manifest.jsonl: no such manifest" in log
    assert re.search(r"^end: \S+ exit [1-9]", log, re.MULTILINE)


@pytest.mark.parametrize("path", SLURM_PROFILES, ids=lambda path: path.stem)
def test_sbatch_test_only_accepts_rendered_script_of_shipped_profile(path, slurm, tmp_path):
    script = tmp_path / f"{path.stem}.sh"
    render = [sys.executable, "-m", "vtt.cli", "render", "--cluster", path.stem, "--config", "jobs/llava.yaml"]
    gpus = str(load_profile(path).gpus_per_node)
    done = subprocess.run([*render, "--gpus", gpus, "-o", str(script)], cwd=ROOT, env=slurm, capture_output=True)
    assert done.returncode == 0, done.stderr
    checked = subprocess.run(
        ["sbatch", "--test-only", str(script)], cwd=ROOT, env=slurm, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "to start at" in checked.stderr


def test_partition_slurm_rejects_is_reported_with_sbatchs_message(slurm, tmp_path):
    profile = tmp_path / "wrong-partition.yaml"
    profile.write_text((ROOT / "jobs/clusters/ci.yaml").read_text() + "partition: 'x; touch pwned'\n")
    profile.write_text(profile.read_text().replace("partition: debug\n", "", 1))
    command = [sys.executable, "-m", "vtt.cli", "submit", "--cluster", str(profile), "--config", "jobs/tiny-llava.yaml"]
    command += ["--gpus", "1", "-o", str(tmp_path / "job.sh")]
    done = subprocess.run(command, cwd=ROOT, env=slurm, capture_output=True, text=True)
    assert done.returncode == 2
    assert "vtt submit: error: sbatch rejected" in done.stderr
    assert "invalid partition specified: x; touch pwned" in done.stderr
    assert not (ROOT / "pwned").exists() and not (tmp_path / "pwned").exists()
