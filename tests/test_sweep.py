"""Sweeps and chains: `vtt sweep` renders one job array over a grid (a TSV row per task, a folder per task), every
combination checked before anything is written; on the test Slurm (fixture `slurm`) the array's tasks train, a
warned task requeues itself alone, and `vtt submit --after` starts a job only after its dependency completed.

    .venv/bin/pytest tests/test_sweep.py      (the Slurm tests need root, slurm-wlm and munge, as test_slurm_jobs)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, tiny_run

from vtt.cluster import sweep
from vtt.cluster.jobs import Array, dependency, render, write_script
from vtt.cluster.profiles import load_profile

CONFIG = "jobs/tiny-seq2seq.yaml"
VENV = Path(sys.executable).parent.parent


def vtt(*words: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtt.cli", *words], cwd=ROOT, capture_output=True, text=True, env=env)


def planned(grid: list[str], extra: list[str], max_parallel: int | None = None, out: str = "outputs/sweep"):
    profile = load_profile(ROOT / "jobs/clusters/ci.yaml")
    extra = [*extra, "--output_dir", out]
    return sweep.plan(profile, CONFIG, 1, None, sweep.parse_grid(grid), extra, max_parallel)


def test_sweep_renders_one_array_task_per_combination_each_with_its_own_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    job, table, words = planned(["learning_rate=1e-3,3e-3", "seed=1,2"], [], max_parallel=2)
    assert len(words) == 4
    second = ["--learning_rate", "1e-3", "--seed", "2", "--output_dir", "outputs/sweep/learning_rate=1e-3,seed=2"]
    assert words[1] == second
    assert table.splitlines() == [
        "task\toutput_dir\tlearning_rate\tseed",
        "0\toutputs/sweep/learning_rate=1e-3,seed=1\t1e-3\t1",
        "1\toutputs/sweep/learning_rate=1e-3,seed=2\t1e-3\t2",
        "2\toutputs/sweep/learning_rate=3e-3,seed=1\t3e-3\t1",
        "3\toutputs/sweep/learning_rate=3e-3,seed=2\t3e-3\t2",
    ]
    job.array = Array(4, "jobs/rendered/sweep.tsv", 2, ["vtt", "sweep", "..."])
    text = render(job)
    assert "#SBATCH --array=0-3%2\n" in text and "#SBATCH --output=logs/%x-%A_%a.out\n" in text
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' not in text
    assert "SWEEP_TABLE=jobs/rendered/sweep.tsv\n" in text and '"${TASK_ARGS[@]}")' in text
    script = write_script(text, tmp_path / "sweep.sh")
    checked = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_sweep_with_a_failing_combination_lists_it_and_writes_nothing(tmp_path):
    # global_batch_size 4 on 1 GPU: a micro batch of 3 does not divide it.
    out = tmp_path / "sweep.sh"
    done = vtt(
        "sweep", "--cluster", "ci", "--config", CONFIG, "--gpus", "1", "--grid", "per_device_train_batch_size=2,3",
        "--render-only", "-o", str(out), "--output_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "1 of 2 combinations fail; nothing was written" in done.stderr
    assert "per_device_train_batch_size=3: " in done.stderr and "per_device_train_batch_size=2:" not in done.stderr
    assert sorted(tmp_path.iterdir()) == []  # no script, no table, no run folder


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["learning_rate"], "write name=value1,value2"),
        (["output_dir=a,b"], "output_dir is the same for every task"),
        (["seed=1,2", "seed=3"], "--grid seed is given twice"),
        (["seed=1,,2"], "an empty or repeated value"),
        ([], "at least one --grid"),
    ],
)
def test_sweep_grid_mistakes_name_the_fix(items, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.parse_grid(items)


def test_sweep_refuses_an_argument_given_both_alone_and_in_the_grid(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="--seed is given as an argument and in --grid"):
        planned(["seed=1,2"], ["--seed", "3"])


def test_submit_after_asks_sbatch_for_afterok_and_to_cancel_on_a_failed_dependency():
    assert dependency(["11", "12_3"]) == ["--dependency=afterok:11:12_3", "--kill-on-invalid-dep=yes"]
    assert dependency([]) == []
    with pytest.raises(ValueError, match="'x; rm' is not a Slurm job id"):
        dependency(["11", "x; rm"])


def make(env: dict[str, str], target: str, **variables: str) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "-o", f"{VENV}/.installed", target, f"VENV={VENV}"]
    command += [f"{name}={value}" for name, value in variables.items()]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done


def show(job_id: str, env: dict[str, str]) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_sweep_array_tasks_train_into_their_own_folders_and_a_warned_task_requeues_alone(slurm, demo_inputs, tmp_path):
    from test_slurm_jobs import job_state

    out = tmp_path / "sweep"
    arguments = [*tiny_run(demo_inputs, "seq2seq"), "--max_steps", "30", "--output_dir", str(out)]
    done = make(
        slurm, "sweep", CLUSTER="ci", TRAINER="tiny-seq2seq", GPUS="1", GRID="learning_rate=1e-3,3e-3",
        ARGS=" ".join(arguments),
    )  # fmt: skip
    array_id = re.search(r"submitted job array (\d+) \(vtt-tiny-seq2seq, 2 tasks", done.stdout).group(1)
    logs = [ROOT / "logs" / f"vtt-tiny-seq2seq-{array_id}_{task}.out" for task in (0, 1)]
    assert f"task 1: --learning_rate 3e-3 --output_dir {out}/learning_rate=3e-3; log {logs[1].relative_to(ROOT)}" in (
        done.stdout
    )
    deadline = time.monotonic() + 900
    while not (logs[1].exists() and "'loss'" in logs[1].read_text()):
        assert time.monotonic() < deadline, f"task 1 of {array_id} never logged a loss"
        time.sleep(0.2)
    # The time-limit warning, to task 1's batch script only: it checkpoints, requeues itself and resumes.
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array_id}_1"], env=slurm, check=True)
    states = [job_state(f"{array_id}_{task}", slurm, log=logs[task]) for task in (0, 1)]
    texts = [log.read_text() for log in logs]
    assert states == ["COMPLETED", "COMPLETED"], texts[0][-3000:] + texts[1][-3000:]
    assert "Restarts=0" in show(f"{array_id}_0", slurm) and "Restarts=1" in show(f"{array_id}_1", slurm)
    assert "requeued (restart 1 of at most 3)" in texts[1] and "requeued" not in texts[0]
    assert re.search(rf"^start: \S+ job \d+ \(vtt-tiny-seq2seq, task {array_id}_1\)", texts[1], re.MULTILINE)
    for task, rate in enumerate(("1e-3", "3e-3")):
        folder = out / f"learning_rate={rate}"
        assert f"task {task} of 2: --output_dir {folder} --learning_rate {rate}" in texts[task]
        assert (folder / "model.safetensors").exists()
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        assert {entry["learning_rate"] for entry in history if "loss" in entry} == {float(rate)}
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 30
    assert sorted(p.name for p in out.iterdir()) == ["learning_rate=1e-3", "learning_rate=3e-3"]
    reported = vtt("report", str(out))  # one page comparing the sweep's runs
    assert reported.returncode == 0, reported.stderr
    page = (out / "report.html").read_text()
    assert "2 run(s), best final train loss first." in page and page.count("<td>30 of 30</td>") == 2


@pytest.mark.slow
def test_submit_after_starts_when_its_dependency_completed_and_a_failed_one_cancels_the_rest(
    slurm, demo_inputs, tmp_path
):
    from test_slurm_jobs import job_state, submitted

    # A held job everything waits for: no job starts before all are submitted, whatever the machine's speed.
    hold = ["sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap", "true"]
    gate = subprocess.run(hold, env=slurm, capture_output=True, text=True, check=True).stdout.strip()

    def submit(*arguments: str) -> tuple[str, Path]:
        return submitted(
            make(slurm, "submit", CLUSTER="ci", TRAINER="tiny-seq2seq", GPUS="1", ARGS=" ".join(arguments))
        )

    def run(name: str) -> list[str]:
        return [*tiny_run(demo_inputs, "seq2seq"), "--max_steps", "2", "--output_dir", str(tmp_path / name)]

    first_id, _ = submit("--after", gate, *run("first"))
    second_id, second_log = submit("--after", first_id, *run("second"))
    bad = ["--model_name_or_path", str(demo_inputs["seq2seq"]), "--dataset", str(tmp_path / "missing.jsonl")]
    failing_id, _ = submit("--after", gate, *bad)
    never_id, _ = submit("--after", f"{first_id}:{failing_id}", *run("never"))
    assert f"Dependency=afterok:{first_id}" in show(second_id, slurm)
    assert f"Dependency=afterok:{first_id}(unfulfilled),afterok:{failing_id}" in show(never_id, slurm)
    subprocess.run(["scontrol", "release", gate], env=slurm, check=True)
    assert job_state(second_id, slurm, log=second_log) == "COMPLETED"
    assert job_state(failing_id, slurm) == "FAILED"
    assert job_state(never_id, slurm) == "CANCELLED"

    def time_of(job_id: str, key: str) -> str:
        return re.search(rf"{key}=(\S+)", show(job_id, slurm)).group(1)

    assert time_of(second_id, "StartTime") >= time_of(first_id, "EndTime")
    assert (tmp_path / "second" / "model.safetensors").exists() and not (tmp_path / "never").exists()


def test_chain_step_after_training_runs_vtt_in_the_profiles_environment():
    from vtt.cluster.chain import step_options, step_script

    profile = load_profile(ROOT / "jobs/clusters/ci.yaml")
    script = step_script(profile, ["report", "outputs/run dir"])
    assert script.endswith("exec python3 -m vtt.cli report 'outputs/run dir'")
    assert "export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1" in script  # ci's nodes are offline
    options = step_options(profile, "vtt-eval-x", gpus=1)
    assert "--partition=debug" in options and "--gpus-per-node=1" in options and "--output=logs/%x-%j.out" in options


@pytest.mark.slow
def test_chain_submits_train_then_eval_then_report_each_after_the_one_before(slurm, demo_inputs, tmp_path):
    from test_slurm_jobs import job_state

    out = tmp_path / "run"
    arguments = [*tiny_run(demo_inputs, "seq2seq"), "--max_steps", "2", "--output_dir", str(out)]
    done = make(slurm, "chain", CLUSTER="ci", TRAINER="tiny-seq2seq", GPUS="1", DATA=str(demo_inputs["manifest"]),
                ARGS=" ".join(arguments))  # fmt: skip
    ids = re.search(r"^jobs: (\d+) (\d+) (\d+)$", done.stdout, re.MULTILINE).groups()
    assert f"Dependency=afterok:{ids[0]}" in show(ids[1], slurm)
    assert f"Dependency=afterok:{ids[1]}" in show(ids[2], slurm)
    states = [job_state(job_id, slurm) for job_id in ids]
    steps = zip(("", "eval-", "report-"), ids, strict=True)
    logs = [ROOT / "logs" / f"vtt-{step}tiny-seq2seq-{job_id}.out" for step, job_id in steps]
    assert states == ["COMPLETED"] * 3, "\n".join(log.read_text()[-2000:] for log in logs if log.exists())
    starts = [re.search(r"StartTime=(\S+)", show(job_id, slurm)).group(1) for job_id in ids]
    ends = [re.search(r"EndTime=(\S+)", show(job_id, slurm)).group(1) for job_id in ids]
    assert starts[1] >= ends[0] and starts[2] >= ends[1]
    assert (out / "eval_generation.json").exists() and (out / "report.html").exists()


def test_chain_prepare_step_is_a_cpu_job_on_the_cpu_partition_with_the_runs_frames(monkeypatch, tmp_path):
    import dataclasses

    from vtt.cluster.chain import prepare_words, prepared_folder, step_options
    from vtt.config import parse_run_config

    monkeypatch.chdir(ROOT)
    profile = load_profile(ROOT / "jobs/clusters/ci.yaml")
    assert profile.cpu_partition == "batch"
    options = step_options(profile, "vtt-prepare-x", 0, cpus=8, cpu_only=True)
    assert "--partition=batch" in options and "--cpus-per-task=8" in options
    assert not [option for option in options if option.startswith(("--gpus", "--gres", "--mem", "--constraint"))]
    # Without cpu_partition: the GPU partition (its memory request too), still asking for no GPU.
    options = step_options(dataclasses.replace(profile, cpu_partition=None), "vtt-prepare-x", 0, 8, cpu_only=True)
    assert "--partition=debug" in options and "--mem=4G" in options and "--cpus-per-task=8" in options
    assert not [option for option in options if option.startswith(("--gpus", "--gres"))]
    # llava: the prepared frames are the run's (num_frames, backend, the processor of its model sizes them).
    run, task, _ = parse_run_config(["--config", "jobs/tiny-llava.yaml", "--num_frames", "3"], world=1, use_cpu=True)
    words = prepare_words("m.jsonl", Path("p"), run, task, 8)
    assert words[:9] == ["prepare", "--manifest", "m.jsonl", "--out", "p", "--trainer", "llava", "--workers", "8"]
    assert " --frames 3 --backend opencv --model outputs/demo/models/tiny-llava " in " ".join(words) + " "
    assert prepared_folder("outputs/runs/x/") == Path("outputs/runs/x-prepared")
    for text, message in [
        ("scheduler: local\ncpu_partition: cpu\n", "scheduler is local .* sets cpu_partition"),
        ("gpus_per_node: 1\ncpu_partition: [cpu]\n", "cpu_partition = \\['cpu'\\]: must be text"),
    ]:
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_profile(tmp_path / "p.yaml")


def fake_sbatch(tmp_path: Path) -> dict[str, str]:
    """An sbatch on PATH that records its arguments (one JSON list a line) and answers job ids 101, 102, ..."""
    import os

    folder = tmp_path / "bin"
    folder.mkdir(parents=True)
    calls = tmp_path / "sbatch.jsonl"
    (folder / "sbatch").write_text(
        f"#!{sys.executable}\nimport json, sys\nwith open({str(calls)!r}, 'a+') as f:\n"
        "    f.seek(0); n = len(f.readlines()); f.write(json.dumps(sys.argv[1:]) + '\\n')\nprint(101 + n)\n"
    )
    (folder / "sbatch").chmod(0o755)
    return dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}")


def test_chain_with_prepare_submits_four_jobs_training_after_prepare_on_its_folder(tmp_path):
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text('{"video": "a.mp4", "question": "q", "answer": "a"}\n')
    out, script = tmp_path / "runs" / "run", tmp_path / "train.sh"
    done = vtt(
        "chain", "--cluster", "ci", "--config", CONFIG, "--gpus", "1", "--eval-data", str(manifest),
        "--prepare", str(manifest), "--prepare-cpus", "2", "-o", str(script), "--output_dir", str(out),
        env=fake_sbatch(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "jobs: 101 102 103 104" in done.stdout
    calls = [json.loads(line) for line in (tmp_path / "sbatch.jsonl").read_text().splitlines()]
    prepare, train, evaluate, report = calls
    folder = tmp_path / "runs" / "run-prepared"
    assert "--partition=batch" in prepare and "--cpus-per-task=2" in prepare
    assert not [word for word in prepare if word.startswith(("--gpus", "--gres", "--dependency"))]
    assert f"--manifest {manifest} --out {folder} --trainer seq2seq --workers 2" in prepare[-1]
    assert train == ["--parsable", "--dependency=afterok:101", "--kill-on-invalid-dep=yes", str(script)]
    assert "--dependency=afterok:102" in evaluate and "--dependency=afterok:103" in report
    text = script.read_text()
    assert f"--dataset {folder}" in text and str(manifest) not in text  # trains on the folder, not the manifest
    refused = vtt(
        "chain", "--cluster", "ci", "--config", CONFIG, "--gpus", "1", "--eval-data", str(manifest),
        "--prepare", str(manifest), "--prepare-out", str(out / "data"), "--output_dir", str(out),
        env=fake_sbatch(tmp_path / "again"),
    )  # fmt: skip
    assert refused.returncode == 2 and "overlap: a run's output_dir may not hold its data" in refused.stderr


@pytest.mark.slow
def test_chain_with_prepare_prepares_then_trains_on_the_prepared_folder_then_evals_and_reports(
    slurm, demo_inputs, tmp_path
):
    from test_slurm_jobs import job_state

    from vtt.data.datasets import is_prepared

    out, folder = tmp_path / "run", tmp_path / "run-prepared"
    arguments = ["--model_name_or_path", str(demo_inputs["seq2seq"]), "--max_steps", "2", "--output_dir", str(out)]
    arguments += ["--prepare", str(demo_inputs["manifest"]), "--prepare-cpus", "1", "-o", str(tmp_path / "train.sh")]
    done = make(slurm, "chain", CLUSTER="ci", TRAINER="tiny-seq2seq", GPUS="1", DATA=str(demo_inputs["manifest"]),
                ARGS=" ".join(arguments))  # fmt: skip
    ids = re.search(r"^jobs: (\d+) (\d+) (\d+) (\d+)$", done.stdout, re.MULTILINE).groups()
    shown = [show(job_id, slurm) for job_id in ids]
    assert "Partition=batch" in shown[0] and "gres/gpu" not in shown[0] and "Dependency=(null)" in shown[0]
    assert "Partition=debug" in shown[1]
    # Slurm shows a dependency until it is met, then (null): a step may be shown after the one before it
    # ended (the CPU prepare of 8 clips takes seconds). The start and end times below prove the order.
    for step, before in zip(shown[1:], ids, strict=False):
        assert f"Dependency=afterok:{before}" in step or "Dependency=(null)" in step, step
    states = [job_state(job_id, slurm) for job_id in ids]
    steps = zip(("prepare-", "", "eval-", "report-"), ids, strict=True)
    logs = [ROOT / "logs" / f"vtt-{step}tiny-seq2seq-{job_id}.out" for step, job_id in steps]
    assert states == ["COMPLETED"] * 4, "\n".join(log.read_text()[-2000:] for log in logs if log.exists())
    starts = [re.search(r"StartTime=(\S+)", show(job_id, slurm)).group(1) for job_id in ids]
    ends = [re.search(r"EndTime=(\S+)", show(job_id, slurm)).group(1) for job_id in ids]
    assert starts[1] >= ends[0] and starts[2] >= ends[1] and starts[3] >= ends[2]
    assert is_prepared(folder) and not (out / "dataset_info.json").exists()
    assert f"--dataset {folder}" in (tmp_path / "train.sh").read_text()  # the training read the prepared folder
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "eval_generation.json").exists() and (out / "report.html").exists()


def test_report_of_a_sweep_folder_ranks_its_runs_by_final_loss_on_one_page(tmp_path):
    folder = tmp_path / "sweep"
    for name, losses in {"learning_rate=1e-3,seed=1": [3.0, 2.5], "learning_rate=3e-3,seed=1": [3.0, 1.5]}.items():
        (folder / name).mkdir(parents=True)
        history = [{"loss": loss, "step": step, "learning_rate": 1e-3} for step, loss in enumerate(losses, 1)]
        state = {"global_step": 2, "max_steps": 2, "log_history": history}
        (folder / name / "trainer_state.json").write_text(json.dumps(state))
    (folder / "learning_rate=1e-2,seed=1").mkdir()  # still training: no trainer_state.json yet
    done = vtt("report", str(folder))
    assert done.returncode == 0, done.stderr
    page = (folder / "report.html").read_text()
    assert "3 run(s), best final train loss first; 1 not finished" in page
    assert "<th>learning_rate</th><th>seed</th>" in page
    best, second, unfinished = (page.index(f"<td>{rate}</td>") for rate in ("3e-3", "1e-3", "1e-2"))
    assert page.index('<tr class="best">') < best < second < unfinished
    assert "<td>1.5000</td>" in page and 'src="data:image/png;base64,' in page
