"""Run a job on this machine with the deepspeed launcher (`vtt run`, `make local`).

    vtt run --config jobs/tiny-llava.yaml --gpus 2 [--learning_rate 1e-3 ...]

Arguments vtt does not know are passed to the trainer, which rejects any it does not know either.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from vtt.config import trainer_of
from vtt.paths import shipped


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_command(config: str | Path, gpus: int, overrides: list[str], master_port: int | None = None) -> list[str]:
    """The deepspeed launcher's command line that trains `config` on `gpus` local processes."""
    trainer = trainer_of(["--config", str(config), *overrides])
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(gpus),
        "--master_port",
        str(master_port or free_port()),
        "--module",
        f"vtt.trainers.{trainer}",
        "--config",
        str(config),
        *overrides,
    ]


def train_locally(config: str | Path, gpus: int, overrides: list[str], log: Path | None = None) -> int:
    """Run the job here; stream its output (and tee it into `log` when given). Returns the exit code."""
    command = deepspeed_command(config, gpus, overrides)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if log is None:
        return subprocess.run(command, env=env).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        log.open("w") as sink,
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        for line in proc.stdout:
            sink.write(line)
            sys.stdout.write(line)
        return proc.wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config, e.g. jobs/tiny-llava.yaml")
    parser.add_argument("--gpus", type=int, default=1, help="processes to start (GPUs here; CPU processes without)")
    parser.add_argument("--log", type=Path, help="also write the output to this file")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    return train_locally(shipped(args.config), args.gpus, extra, args.log)
