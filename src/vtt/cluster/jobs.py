"""Cluster jobs: check, render and submit a run config on a cluster profile (`vtt render`, `vtt submit`).

    vtt render --cluster ci --config jobs/tiny-llava.yaml --gpus 2 [--nodes 2] [-o FILE] [--name value ...]
    vtt submit --cluster ci --config jobs/tiny-llava.yaml --gpus 2 [--nodes 2] [--after JOBID[:JOBID]] [--name v ...]

`preflight()` is the one place that validates a job before it is rendered, submitted or run here. One
Jinja2 template (job.sh.j2, beside this module) renders every profile; every value in it is shell-quoted.
A job array (`vtt sweep`, vtt.cluster.sweep) is the same template with its Array block.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vtt.cluster.profiles import SECRET_NAME, Profile, load_profile, profile_path
from vtt.exits import NO_REQUEUE, Exit
from vtt.files import write_atomically

RENDERED = Path("jobs/rendered")
# Run-config arguments that carry secrets: never written into a script (TrainingArguments has hub_token).
SECRET_ARGUMENTS = ("--hub_token",)
ENV_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class Array:
    """A job array: task i of `tasks` adds the training arguments of row i of `table` (vtt.cluster.sweep)."""

    tasks: int
    table: str  # the TSV beside the script: a header of argument names, then one row per task
    max_parallel: int | None = None  # sbatch --array=0-(n-1)%K: at most K tasks at once
    command: list[str] = field(default_factory=list)  # the command that renders it, for the script's header

    @property
    def directive(self) -> str:
        return f"0-{self.tasks - 1}" + (f"%{self.max_parallel}" if self.max_parallel else "")


@dataclass
class Job:
    """A checked job: what the template needs besides the profile."""

    profile: Profile
    config: str
    gpus: int
    nodes: int
    trainer: str
    overrides: list[str] = field(default_factory=list)
    module: str | None = None  # run this instead of the trainer (vtt.cluster.fabric for `make nccl-check`)
    array: Array | None = None  # a sweep's tasks (vtt.cluster.sweep)

    @property
    def name(self) -> str:
        return f"vtt-{Path(self.config).stem}"

    @property
    def script_name(self) -> str:
        kind = "-sweep" if self.array else ""
        return f"{self.profile.name}-{Path(self.config).stem}{kind}-{self.nodes}x{self.gpus}.sh"

    def log(self, job_id: str, task: int | None = None) -> Path:
        """Slurm's log of the job (--output %x-%j.out), or of one array task (%x-%A_%a.out)."""
        name = f"{self.name}-{job_id}" + (f"_{task}" if task is not None else "")
        return Path(self.profile.log_dir) / f"{name}.out"


class Shell(str):
    """Text that is already valid, safe shell: the template writes it as it is."""


def quote_keeping_variables(value: str) -> Shell:
    """`value` as one shell word where `$NAME`/`${NAME}` expand at run time and everything else is literal.

    `/scratch/$USER` stays useful; `$(id)`, backquotes, `;` and spaces stay inert text.
    """
    parts, last = [], 0
    for match in ENV_REFERENCE.finditer(value):
        if match.start() > last:
            parts.append(shlex.quote(value[last : match.start()]))
        parts.append(f'"${{{match.group(1) or match.group(2)}}}"')
        last = match.end()
    if last < len(value) or not parts:
        parts.append(shlex.quote(value[last:]))
    return Shell("".join(parts))


def _finalize(value):
    """Jinja's hook on every {{ value }}: quote it for the shell unless it is already Shell."""
    if isinstance(value, Shell):
        return value
    if isinstance(value, bool) or value is None:
        raise TypeError(f"the job template tried to write {value!r}; guard it with an if")
    return shlex.quote(str(value))


def _check_text(what: str, value: str) -> None:
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"{what} {value!r} holds a control character (newline?): write it on one line")


def preflight(
    profile: Profile, config: str | Path, gpus: int, nodes: int | None = None, overrides: list[str] | tuple = ()
) -> Job:
    """Every check that must pass before a job is rendered, submitted or run here; returns the checked Job.

    Raises ValueError naming the file, the value and the fix. Writes nothing.
    """
    from vtt.check.deepspeed import check_run
    from vtt.config import parse_run_config

    nodes = profile.nodes if nodes is None else nodes
    config = str(config)
    overrides = [str(word) for word in overrides]
    for word in [config, *overrides]:
        _check_text("argument", word)
    if gpus < 1 or nodes < 1:
        raise ValueError(f"--gpus {gpus} --nodes {nodes}: a job needs at least 1 GPU on at least 1 node")
    if profile.gpus_per_node is not None and gpus > profile.gpus_per_node:
        raise ValueError(
            f"{profile.path}: gpus_per_node is {profile.gpus_per_node}, but the job asks for {gpus} GPUs per node: "
            f"ask for at most {profile.gpus_per_node} per node and more nodes (--nodes / NODES=)"
        )
    if profile.scheduler == "local" and nodes != 1:
        raise ValueError(f"{profile.path}: the local profile is this one machine: --nodes {nodes} needs a cluster")
    options = [word.split("=")[0] for word in overrides if word.startswith("--")]
    secrets = [word for word in options if word in SECRET_ARGUMENTS or SECRET_NAME.search(word)]
    if secrets:
        raise ValueError(
            f"{secrets[0]} looks like a secret: it would be written into the job script. Export HF_TOKEN in the "
            f"shell you submit from instead (the job reads it from the environment)"
        )
    run, _, training = parse_run_config(["--config", config, *overrides], world=nodes * gpus, use_cpu=True)
    if getattr(training, "hub_token", None):
        raise ValueError(f"{config}: hub_token is set: remove it and export HF_TOKEN in the shell you submit from")
    report = check_run(config, gpus, nodes, overrides, gpu_memory_gb=profile.gpu_memory_gb)  # with or without DeepSpeed
    if not report.ok:
        raise ValueError("vtt check found problems; nothing was written:\n" + "\n".join(report.lines()))
    for warning in report.warnings:
        print(f"vtt check: {warning.line('warning', report.deepspeed)}", file=sys.stderr)
    return Job(profile=profile, config=config, gpus=gpus, nodes=nodes, trainer=run.trainer, overrides=overrides)


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(job: Job) -> str:
    """The job script for `job` (a checked Job from preflight)."""
    from vtt import __version__

    profile, container = job.profile, job.profile.container
    slurm = profile.scheduler == "slurm"
    gpu_request = f"{profile.gpu_type}:{job.gpus}" if profile.gpu_type else str(job.gpus)
    directives = [
        (option, getattr(profile, key))
        for option, key in [
            ("partition", "partition"),
            ("account", "account"),
            ("qos", "qos"),
            ("time", "time"),
            ("mem", "mem_per_node"),
            ("constraint", "constraint"),
        ]
        if getattr(profile, key) is not None
    ]
    # Inside a container the working directory, the HF cache and scratch must be the same paths as outside.
    binds = [Shell('"$PWD:$PWD"')] if container.runtime == "docker" else []
    for path in (profile.hf_home, profile.scratch):
        if path and container.runtime != "none":
            binds.append(Shell(f"{quote_keeping_variables(path)}:{quote_keeping_variables(path)}"))
    binds += [quote_keeping_variables(bind) for bind in container.binds]
    mounts = Shell(",".join(['"$PWD:$PWD"', *binds]))
    env = [(name, quote_keeping_variables(value)) for name, value in profile.env.items()]
    # docker does not pass the host's environment: name every variable the node launcher and trainer read.
    docker_env = ["SLURM_NODEID", "SLURM_JOB_ID", "PYTHONUNBUFFERED", "HF_TOKEN"]
    docker_env += ["HF_HOME"] * bool(profile.hf_home) + ["TMPDIR"] * bool(profile.scratch)
    if not profile.internet:
        docker_env += ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"]
    docker_env += list(profile.env)
    render_command = ["vtt", "render", "--cluster", profile.path, "--config", job.config, "--gpus", str(job.gpus)]
    render_command += ["--nodes", str(job.nodes), *job.overrides]
    if job.array:
        render_command = job.array.command
    context = {
        "job_name": job.name,
        "trainer": job.trainer,
        "module": job.module or f"vtt.train.{job.trainer}",
        "nodes": job.nodes,
        "gpus": job.gpus,
        "config": job.config,
        "overrides": job.overrides,
        "profile": profile,
        "profile_path": profile.path,
        "version": __version__,
        "render_command": Shell(shlex.join(render_command)),
        "slurm": slurm,
        "array": job.array,
        "array_directive": Shell(job.array.directive) if job.array else None,
        "array_table": job.array.table if job.array else None,
        "log_dir": profile.log_dir,
        "gpu_request": gpu_request,
        "cpus_per_task": profile.cpus_per_gpu * job.gpus if profile.cpus_per_gpu else None,
        "directives": directives,
        "sbatch_extra": [Shell(line) for line in profile.sbatch_extra],  # #SBATCH options, read by sbatch only
        "hf_home": quote_keeping_variables(profile.hf_home) if profile.hf_home else None,
        "scratch": Shell(f'{quote_keeping_variables(profile.scratch)}/"vtt-${{SLURM_JOB_ID:-$$}}"')
        if profile.scratch
        else None,
        "env": env,
        "runtime": container.runtime,
        "image": quote_keeping_variables(container.image) if container.image else None,
        "binds": binds,
        "mounts": mounts,
        "docker_env": docker_env,
        "python": quote_keeping_variables(profile.python),
        "stopped_exit": int(Exit.STOPPED),
        # Exit codes a requeue would only repeat (vtt.exits): bad input, disk full, failed push.
        "no_requeue": Shell("|".join(str(int(code)) for code in NO_REQUEUE)),
    }
    return _environment().get_template("job.sh.j2").render(**context)


def write_script(text: str, out: Path) -> Path:
    """Write the script whole or not at all, executable."""
    return write_atomically(out, text, mode=0o755)


def dependency(after: list[str] | tuple = ()) -> list[str]:
    """sbatch's options that start a job only after `after` (job ids) all completed: a failed one cancels it
    (--kill-on-invalid-dep) instead of leaving it pending forever (DependencyNeverSatisfied)."""
    for job_id in after:
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise ValueError(f"--after {':'.join(after)}: {job_id!r} is not a Slurm job id (digits, or ARRAY_TASK)")
    return [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"] if after else []


def submit(job: Job, script: Path, after: list[str] | tuple = ()) -> tuple[str, Path]:
    """`sbatch --parsable script`, after the jobs `after` completed; returns (job id, log path; an array's: the
    log of task 0). Errors carry sbatch's own message."""
    if job.profile.scheduler != "slurm":
        raise ValueError(
            f"{job.profile.path}: scheduler is {job.profile.scheduler}, not slurm: run it here with "
            f"`vtt run --config {job.config} --gpus {job.gpus}` (make local) or `bash {script}`"
        )
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ValueError(
            f"sbatch is not on PATH: submit from a login node of the cluster ({job.profile.path}), or copy the "
            f"rendered script there and run `sbatch {script}`"
        )
    options = dependency(after)
    Path(job.profile.log_dir).mkdir(parents=True, exist_ok=True)  # Slurm fails the job silently without it
    done = subprocess.run([sbatch, "--parsable", *options, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise ValueError(f"sbatch rejected {script} (profile {job.profile.path}): {message}")
    job_id = done.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
    return job_id, job.log(job_id, 0 if job.array else None)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """What every job command asks: render, submit, sweep and chain."""
    parser.add_argument("--cluster", required=True, help="a profile name (ci) or file (jobs/clusters/ci.yaml)")
    parser.add_argument("--config", required=True, help="run config, e.g. jobs/tiny-llava.yaml")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs per node")
    parser.add_argument("--nodes", type=int, help="nodes (default: the profile's nodes)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument(
        "--module", choices=["vtt.cluster.fabric"], help="run this module on the job's GPUs instead of the trainer"
    )
    parser.add_argument(
        "-o", "--out", type=Path, help="write the script here (a folder/ gets a generated name); render: stdout"
    )
    if parser.prog.endswith(" submit"):
        parser.add_argument(
            "--after",
            type=lambda text: text.split(":"),
            default=[],
            metavar="JOBID[:JOBID]",
            help="start when these jobs completed (sbatch --dependency=afterok); a failed one cancels this job",
        )


def _out_path(job: Job, out: Path | None) -> Path:
    if out is None:
        return RENDERED / job.script_name
    if str(out).endswith("/") or out.is_dir():
        return out / job.script_name
    return out


def run(args: argparse.Namespace, extra: list[str]) -> int:
    profile = load_profile(profile_path(args.cluster))
    job = preflight(profile, args.config, args.gpus, args.nodes, extra)
    job.module = args.module
    text = render(job)
    if args.command == "render" and args.out is None:
        sys.stdout.write(text)
        return 0
    script = write_script(text, _out_path(job, args.out))
    if args.command == "render":
        print(script)
        return 0
    job_id, log = submit(job, script, args.after)
    print(f"submitted job {job_id} ({job.name}, {job.nodes} node(s) x {job.gpus} GPU(s)) from {script}")
    print(f"log:    {log}")
    print(f"follow: squeue -j {job_id}; tail -f {log}")
    return 0
