"""Chains: [prepare ->] train -> eval -> report as dependent Slurm jobs (`vtt chain`, `make chain`).

    vtt chain --cluster ci --config jobs/tiny-seq2seq.yaml --gpus 1 --eval-data held-out.jsonl [--name value ...]
        [--prepare MANIFEST [--prepare-out FOLDER] [--prepare-cpus N]]

The training job is the one `vtt submit` renders (checked by jobs.preflight before anything is submitted).
Eval (`vtt eval --model OUTPUT_DIR --data EVAL_DATA`, on one GPU) and report (`vtt report OUTPUT_DIR`) are
one-command jobs that start only after the step before completed: sbatch --dependency=afterok with
--kill-on-invalid-dep=yes, so a failed step cancels the rest instead of leaving them pending forever.
With --prepare, a first CPU job (`vtt prepare --manifest MANIFEST --out FOLDER --trainer T`, on the profile's
cpu_partition, else its partition without a GPU) decodes the manifest once and the training job, after it,
trains on FOLDER (`--dataset FOLDER`); FOLDER defaults to `<output_dir>-prepared` beside output_dir. Prints
every job id. The steps run the profile's python with its modules and environment; a profile with a
container runtime trains in it, but its other steps are not chained (submit them in the image).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

from vtt.cluster.jobs import (
    _check_text,
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

PREPARE_CPUS = 8  # the prepare job's CPUs (--prepare-cpus) and its decoding workers


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


def step_options(profile: Profile, name: str, gpus: int, cpus: int | None = None, cpu_only: bool = False) -> list[str]:
    """sbatch's options for a step: the profile's partition, account, qos, time and memory, one task.

    cpu_only: on the profile's cpu_partition when it has one, without mem_per_node and constraint there (they
    describe the GPU nodes); without one, on partition as the other steps (and asking for no GPU)."""
    cpu_nodes = cpu_only and profile.cpu_partition is not None
    options = [f"--job-name={name}", f"--output={profile.log_dir}/%x-%j.out", "--nodes=1", "--ntasks=1"]
    for option, value in [
        ("partition", profile.cpu_partition if cpu_nodes else profile.partition),
        ("account", profile.account),
        ("qos", profile.qos),
        ("time", profile.time),
        ("mem", None if cpu_nodes else profile.mem_per_node),
        ("constraint", None if cpu_nodes else profile.constraint),
    ]:
        if value is not None:
            options.append(f"--{option}={value}")
    if gpus:
        request = f"{profile.gpu_type}:{gpus}" if profile.gpu_type else str(gpus)
        options.append(f"--gres=gpu:{request}" if profile.gres_style == "gres" else f"--gpus-per-node={request}")
        cpus = profile.cpus_per_gpu * gpus if profile.cpus_per_gpu else cpus
    if cpus:
        options.append(f"--cpus-per-task={cpus}")
    return options


def prepared_folder(output_dir: str | Path) -> Path:
    """Where --prepare writes by default: `<output_dir>-prepared` beside output_dir, never inside it (vtt.outputs
    refuses an output_dir that holds the run's data) nor holding it."""
    out = Path(output_dir)
    if out.name in ("", ".", ".."):
        out = out.resolve()
    return out.with_name(f"{out.name}-prepared")


def prepare_words(manifest: str, folder: Path, run, task, cpus: int) -> list[str]:
    """`vtt prepare`'s arguments for the training's data: its trainer and, for llava, the run's sampling (frames or
    fps, backend, the model whose processor sizes the frames, max_reject_ratio), so that the prepared frames are
    the ones training on the manifest would decode. --workers: the job's CPUs."""
    words = ["prepare", "--manifest", manifest, "--out", str(folder), "--trainer", run.trainer, "--workers", str(cpus)]
    if run.trainer == "llava":
        if task.fps:
            words += ["--fps", str(task.fps)] + (["--max-frames", str(task.max_frames)] if task.max_frames else [])
        else:
            words += ["--frames", str(task.num_frames)]
        words += ["--backend", task.video_backend, "--model", run.model_name_or_path]
        words += ["--max-reject-ratio", str(task.max_reject_ratio)]
    return words


def overlapping(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def submit_step(
    profile: Profile, name: str, words: list[str], after: list[str], gpus: int = 0, cpus: int | None = None
) -> str:
    """sbatch a one-command step after `after`; returns its job id. Errors carry sbatch's own message.
    A step with `cpus` is a CPU job (step_options' cpu_only)."""
    options = step_options(profile, name, gpus, cpus, cpu_only=cpus is not None)
    command = ["sbatch", "--parsable", *options, *dependency(after)]
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
    parser.add_argument(
        "--prepare",
        metavar="MANIFEST",
        help="first a CPU job runs `vtt prepare` on this manifest; training then trains on the prepared folder",
    )
    parser.add_argument(
        "--prepare-out", type=Path, metavar="FOLDER", help="the prepared folder (default: <output_dir>-prepared)"
    )
    parser.add_argument(
        "--prepare-cpus", type=int, metavar="N", help="CPUs of the prepare job, its decoding workers (8)"
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
    if args.prepare is None and (args.prepare_out is not None or args.prepare_cpus is not None):
        raise ValueError("--prepare-out and --prepare-cpus describe the --prepare step: add --prepare MANIFEST")
    checked = extra
    if args.prepare is not None:
        _check_text("--prepare", args.prepare)
        args.prepare_cpus = PREPARE_CPUS if args.prepare_cpus is None else args.prepare_cpus
        if args.prepare_cpus < 1:
            raise ValueError(f"--prepare-cpus {args.prepare_cpus}: give 1 or more")
        if not Path(args.prepare).is_file():
            raise ValueError(f"--prepare {args.prepare}: no such manifest (a .jsonl or .csv file)")
        given = [word for word in extra if word == "--dataset" or word.startswith("--dataset=")]
        if given:
            raise ValueError(f"--prepare {args.prepare} makes the training's dataset: remove {given[0]} and its value")
        # The prepared folder does not exist before the prepare job ran: the training is checked with the manifest
        # it is made from as its dataset (the same samples; preflight's checks read the config, not the data),
        # and submitted with --dataset FOLDER instead.
        checked = [*extra, "--dataset", args.prepare]
    job = preflight(profile, args.config, args.gpus, args.nodes, checked)
    run_args, task, training = parse_run_config(
        ["--config", args.config, *checked], world=job.nodes * job.gpus, use_cpu=True
    )
    output_dir, stem = str(training.output_dir), Path(args.config).stem
    logs = Path(profile.log_dir)
    after, prepared, ids = [], [], []
    if args.prepare is not None:
        folder = args.prepare_out or prepared_folder(output_dir)
        _check_text("--prepare-out", str(folder))
        if overlapping(folder, Path(output_dir)):
            raise ValueError(
                f"--prepare-out {folder} and output_dir {output_dir} overlap: a run's output_dir may not hold its "
                f"data (vtt.outputs); give a folder beside it"
            )
        if folder.resolve() in Path(args.prepare).resolve().parents:
            raise ValueError(f"--prepare-out {folder} holds the manifest {args.prepare}: give a folder of its own")
        job.overrides = [*extra, "--dataset", str(folder)]
        words = prepare_words(args.prepare, folder, run_args, task, args.prepare_cpus)
        logs.mkdir(parents=True, exist_ok=True)  # Slurm fails the job silently without it
        prepare_id = submit_step(profile, f"vtt-prepare-{stem}", words, [], cpus=args.prepare_cpus)
        where = profile.cpu_partition or profile.partition or "the default partition"
        print(f"submitted job {prepare_id} (prepare, {where}, {args.prepare_cpus} CPU(s)): vtt {shlex.join(words)}")
        after, ids = [prepare_id], [prepare_id]
        prepared = [f"{logs}/vtt-prepare-{stem}-{prepare_id}.out"]
    script = write_script(render(job), _out_path(job, args.out))
    train_id, log = submit(job, script, after)
    evaluate = ["eval", "--model", output_dir, "--data", args.eval_data]
    eval_id = submit_step(profile, f"vtt-eval-{stem}", evaluate, [train_id], gpus=1)
    report_id = submit_step(profile, f"vtt-report-{stem}", ["report", output_dir], [eval_id])
    ids += [train_id, eval_id, report_id]
    waits = f", after {after[0]}" if after else ""
    print(f"submitted job {train_id} (train{waits}, {job.name}, {job.nodes} node(s) x {job.gpus} GPU(s)) from {script}")
    print(f"submitted job {eval_id} (eval, after {train_id}): vtt eval --model {output_dir} --data {args.eval_data}")
    print(f"submitted job {report_id} (report, after {eval_id}): {Path(output_dir) / 'report.html'}")
    print(f"jobs: {' '.join(ids)}")
    steps = [*prepared, str(log), f"{logs}/vtt-eval-{stem}-{eval_id}.out", f"{logs}/vtt-report-{stem}-{report_id}.out"]
    print(f"logs: {', '.join(steps)}")
    print(f"follow: squeue -j {','.join(ids)}")
    return 0
