"""Run a job on this machine with the deepspeed launcher (`vtt run`, `make local`).

    vtt run --config jobs/tiny-llava.yaml --gpus 2 [--learning_rate 1e-3 ...]

Arguments vtt does not know are passed to the trainer, which rejects any it does not know either.
SIGTERM or SIGUSR1 to `vtt run` reaches the trainers as SIGUSR1: they save a checkpoint at the end of
the current optimizer step and exit 75 (vtt.train.preempt); the next `vtt run` of the same config resumes
from it (`--no-resume` starts from step 0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from vtt.check.offline import require_staged_if_offline
from vtt.config import RunCommand, run_command
from vtt.files import shipped
from vtt.train.environment import job_environment
from vtt.train.throughput import LAUNCH_TIME_ENV


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_devices(gpus: int, env: Mapping[str, str] = os.environ) -> list[int | str]:
    """The devices `gpus` local processes train on: the first `gpus` of CUDA_VISIBLE_DEVICES, else 0..gpus-1.

    DeepSpeed's runner, given --num_gpus, drops CUDA_VISIBLE_DEVICES and takes GPUs 0..n-1 — on a node
    shared by jobs (Slurm without device cgroups sets CUDA_VISIBLE_DEVICES=2,3), someone else's GPUs.
    """
    entries = [entry.strip() for entry in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    visible = [int(entry) if entry.isdigit() else entry for entry in entries]  # indices, or GPU UUIDs
    if not visible:
        return list(range(gpus))
    if gpus > len(visible):
        raise ValueError(
            f"--gpus {gpus}, but CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} lists {len(visible)}: "
            f"pass --gpus {len(visible)} or make more devices visible"
        )
    return visible[:gpus]


def per_node_launch(gpus: int, master_port: int | None = None) -> list[str]:
    """DeepSpeed's per-node launcher (what its runner executes for one node), given the devices by name
    so that each process sees CUDA_VISIBLE_DEVICES set to its job's devices. A script or `--module M`
    and its arguments follow."""
    from deepspeed.launcher.runner import encode_world_info

    return [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        f"--world_info={encode_world_info({'localhost': local_devices(gpus)})}",
        "--master_addr=127.0.0.1",
        f"--master_port={master_port or free_port()}",
    ]


def deepspeed_command(run: RunCommand, gpus: int, master_port: int | None = None) -> list[str]:
    """The command that trains `run` (a run config and its overrides) on `gpus` local processes."""
    return [*per_node_launch(gpus, master_port), "--module", f"vtt.train.{run.trainer}", *run.argv]


def _ignore_usr1() -> None:
    # In the launcher's process, before exec: an ignored signal stays ignored in the deepspeed launcher and
    # its children (SIGUSR1 would kill them: they do not handle it); the trainers install their own handler.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def forward_stop_signals(proc: subprocess.Popen) -> None:
    """SIGTERM/SIGUSR1 to this process -> SIGUSR1 to every process under `proc`: the trainers checkpoint and stop.

    Not SIGTERM: the deepspeed launcher answers it by killing the trainers, mid-save if need be.
    """
    import psutil

    def forward(number, frame) -> None:
        print(f"vtt run: {signal.Signals(number).name}: asking the trainers to checkpoint and stop", flush=True)
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):  # ended meanwhile
                process.send_signal(signal.SIGUSR1)

    for number in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(number, forward)


def train_locally(config: str | Path, gpus: int, overrides: list[str], log: Path | None = None) -> int:
    """Run the job here; stream its output (and tee it into `log` when given). Returns the exit code."""
    run = run_command(config, overrides)
    command = deepspeed_command(run, gpus)
    # On an offline node, a model missing from the cache fails here in seconds, not after the launch.
    require_staged_if_offline(run)
    env = job_environment()
    env[LAUNCH_TIME_ENV] = str(time.time())
    if log is None:
        with subprocess.Popen(command, env=env, preexec_fn=_ignore_usr1) as proc:
            forward_stop_signals(proc)
            return proc.wait()
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        log.open("w") as sink,
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_ignore_usr1
        ) as proc,
    ):
        forward_stop_signals(proc)
        for line in proc.stdout:
            sink.write(line)
            sys.stdout.write(line)
        return proc.wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config, e.g. jobs/tiny-llava.yaml")
    parser.add_argument("--gpus", type=int, default=1, help="processes to start (GPUs here; CPU processes without)")
    parser.add_argument("--log", type=Path, help="also write the output to this file")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start from step 0 even when output_dir holds a checkpoint (the run config's --resume false)",
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from vtt.cluster.jobs import preflight
    from vtt.cluster.profiles import load_profile, profile_path

    if args.no_resume:
        extra = [*extra, "--resume", "false"]
    # The same pre-flight check as render/submit, on the local profile (this machine, one node).
    preflight(load_profile(profile_path("local")), shipped(args.config), args.gpus, 1, extra)
    return train_locally(shipped(args.config), args.gpus, extra, args.log)
