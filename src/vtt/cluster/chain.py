"""Chains: train -> eval -> report as dependent Slurm jobs (`vtt chain`, `make chain`).

    vtt chain --cluster ci --config jobs/tiny-seq2seq.yaml --gpus 1 --eval-data held-out.jsonl [--name value ...]

The training job is the one `vtt submit` renders (checked by jobs.preflight before anything is submitted).
Eval (`vtt eval --model OUTPUT_DIR --data EVAL_DATA`, on one GPU) and report (`vtt report OUTPUT_DIR`) are
one-command jobs that start only after the step before completed: sbatch --dependency=afterok with
--kill-on-invalid-dep=yes, so a failed step cancels the rest instead of leaving them pending forever.
Prints the three job ids. The steps run the profile's python with its modules and environment; a profile
with a container runtime trains in it, but its eval and report are not chained (submit them in the image).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

from vtt.cluster.jobs import (
    _out_path,
    add_job_arguments,
    dependency,
    preflight,
    quote_keeping_variables,
    render,
    submit,
    write_script,
)
from vtt.cluster.profiles import Profile, load_profile, profile_path


def step_script(profile: Profile, words: list[str]) -> str:
    """The bash of a one-command step: the profile's modules and environment, then `python -m vtt.cli WORDS`."""
    lines = [f"module load {shlex.quote(module)}" for module in profile.modules]
    exports = ["PYTHONUNBUFFERED=1"]
    if profile.hf_home:
        exports.append(f"HF_HOME={quote_keeping_variables(profile.hf_home)}")
    if not profile.internet:
        exports += ["HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"]
    exports += [f"{name}={quote_keeping_variables(value)}" for name, value in profile.env.items()]
    lines.append("export " + " ".join(exports))
    lines.append(f"exec {quote_keeping_variables(profile.python)} -m vtt.cli {shlex.join(words)}")
    return "; ".join(lines)


def wrapped(script: str) -> str:
    """sbatch --wrap runs /bin/sh (dash on Debian): the step runs in bash, as the job template does."""
    return f"exec bash -euo pipefail -c {shlex.quote(script)}"


def step_options(profile: Profile, name: str, gpus: int) -> list[str]:
    """sbatch's options for a step: the profile's partition, account, qos, time and memory, one task."""
    options = [f"--job-name={name}", f"--output={profile.log_dir}/%x-%j.out", "--nodes=1", "--ntasks=1"]
    for option, value in [
        ("partition", profile.partition),
        ("account", profile.account),
        ("qos", profile.qos),
        ("time", profile.time),
        ("mem", profile.mem_per_node),
        ("constraint", profile.constraint),
    ]:
        if value is not None:
            options.append(f"--{option}={value}")
    if gpus:
        request = f"{profile.gpu_type}:{gpus}" if profile.gpu_type else str(gpus)
        options.append(f"--gres=gpu:{request}" if profile.gres_style == "gres" else f"--gpus-per-node={request}")
        if profile.cpus_per_gpu:
            options.append(f"--cpus-per-task={profile.cpus_per_gpu * gpus}")
    return options


def submit_step(profile: Profile, name: str, words: list[str], after: list[str], gpus: int = 0) -> str:
    """sbatch a one-command step after `after`; returns its job id. Errors carry sbatch's own message."""
    command = ["sbatch", "--parsable", *step_options(profile, name, gpus), *dependency(after)]
    command += ["--wrap", wrapped(step_script(profile, words))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise ValueError(f"sbatch rejected the {name} step (profile {profile.path}): {message}")
    return done.stdout.strip().split(";")[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--eval-data", required=True, help="held-out data with answers for `vtt eval`")
    parser.add_argument(
        "-o", "--out", type=Path, help="the training job's script (default: jobs/rendered/<generated name>)"
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from vtt.config import parse_run_config

    profile = load_profile(profile_path(args.cluster))
    if profile.scheduler != "slurm":
        raise ValueError(f"{profile.path}: scheduler is {profile.scheduler}: a chain is dependent Slurm jobs")
    if profile.container.runtime != "none":
        raise ValueError(
            f"{profile.path}: container runtime {profile.container.runtime}: chain runs eval and report on the "
            f"nodes' python; submit the training with `vtt submit` and the steps in the image with --after"
        )
    if shutil.which("sbatch") is None:
        raise ValueError(f"sbatch is not on PATH: run vtt chain on a login node of the cluster ({profile.path})")
    job = preflight(profile, args.config, args.gpus, args.nodes, extra)
    training = parse_run_config(["--config", args.config, *extra], world=job.nodes * job.gpus, use_cpu=True)[2]
    output_dir, stem = str(training.output_dir), Path(args.config).stem
    script = write_script(render(job), _out_path(job, args.out))
    train_id, log = submit(job, script)
    evaluate = ["eval", "--model", output_dir, "--data", args.eval_data]
    eval_id = submit_step(profile, f"vtt-eval-{stem}", evaluate, [train_id], gpus=1)
    report_id = submit_step(profile, f"vtt-report-{stem}", ["report", output_dir], [eval_id])
    print(f"submitted job {train_id} (train, {job.name}, {job.nodes} node(s) x {job.gpus} GPU(s)) from {script}")
    print(f"submitted job {eval_id} (eval, after {train_id}): vtt eval --model {output_dir} --data {args.eval_data}")
    print(f"submitted job {report_id} (report, after {eval_id}): {Path(output_dir) / 'report.html'}")
    print(f"jobs: {train_id} {eval_id} {report_id}")
    logs = Path(profile.log_dir)
    print(f"logs: {log}, {logs}/vtt-eval-{stem}-{eval_id}.out, {logs}/vtt-report-{stem}-{report_id}.out")
    print(f"follow: squeue -j {train_id},{eval_id},{report_id}")
    return 0
