"""The image itself, built and run here: `make image-smoke` builds the Dockerfile with podman (a local Debian 12
base, the CPU build of the pinned torch, docker/install.sh from a host wheel folder) once per test session,
trains both tiny models in it and checks the shipped configs; the tests below then run that same image.

    .venv/bin/pytest tests/test_image.py      (as root, with podman, runc and debootstrap: make system)

The conftest hook runs this module last: its build is the suite's longest step and needs nothing else. What is
not run here (no GPU, no Apptainer): the CUDA base, fused_adam, `make sif` (docs/containers.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import ROOT, tiny_run

pytestmark = pytest.mark.slow
VENV = Path(sys.executable).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE = f"localhost/vtt:{PROJECT['project']['version']}-cpu"  # make image-smoke's SMOKE_IMAGE
BASE = "localhost/vtt-base:bookworm"  # and its SMOKE_BASE
PODMAN = str(ROOT / "tools" / "podman")  # podman with runc and the rlimits a root podman may set here
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)


def in_image(*args: str, entrypoint: str | None = None, options: tuple = ()) -> subprocess.CompletedProcess:
    """A fresh container of the image (its user, its working folder unless options say otherwise)."""
    command = ["run", "--rm", *options, *(["--entrypoint", entrypoint] if entrypoint else []), IMAGE, *args]
    return podman(*command)


class ProcessWatch(threading.Thread):
    """Every second, the processes of each running container of IMAGE (`podman top`: user, host user, args)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopping = threading.Event()
        self.seen: set[tuple[str, str, str]] = set()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            listed = podman("ps", "--format", "{{.ID}} {{.Image}}", timeout=30).stdout.split("\n")
            for cid in [line.split()[0] for line in listed if line.strip().endswith(IMAGE)]:
                top = podman("top", cid, "user", "huser", "pid", "args", timeout=30)
                for line in top.stdout.splitlines()[1:]:
                    user, huser, _pid, args = (line.split(None, 3) + [""] * 4)[:4]
                    self.seen.add((user, huser, args))


@pytest.fixture(scope="session")
def smoke() -> dict:
    """`make image-smoke` once: base image, wheel folder, build, then vtt demo and vtt check in the image, with
    the user of every process of its containers recorded while it ran."""
    for tool in ("podman", "runc", "debootstrap"):
        assert shutil.which(tool), f"{tool} is not installed: as root, make system (tools/system-packages.sh)"
    watch = ProcessWatch()
    watch.start()
    started = time.monotonic()
    # -o: the venv is this test's own; make must not reinstall it.
    command = ["make", "--no-print-directory", "-o", f"{VENV}/.installed", "image-smoke", f"VENV={VENV}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    elapsed = time.monotonic() - started
    watch.stopping.set()
    watch.join()
    assert done.returncode == 0, f"make image-smoke failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    print(f"make image-smoke: {elapsed:.0f} s")
    return {"stdout": done.stdout, "stderr": done.stderr, "seconds": elapsed, "processes": watch.seen}


def test_make_image_smoke_builds_the_dockerfile_and_both_trainers_train_in_the_image(smoke):
    out = smoke["stdout"]
    # One recipe: the Dockerfile at the root, its base and torch chosen by build arguments.
    build = re.search(r"^tools/podman build -t vtt:\S+-cpu (.*?) \.$", out, re.MULTILINE | re.DOTALL).group(1)
    for argument in ("CUDA_IMAGE=" + BASE, "TORCH=cpu", "PYTHON_VERSION=3.11", "WHEELHOUSE=/wheels"):
        assert f"--build-arg {argument}" in build, build
    assert "STEP 1/" in out and f"FROM {BASE}" in out
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Config.Labels}}", IMAGE).stdout)
    assert labels["vtt.torch"] == "cpu" and labels["org.opencontainers.image.base.name"] == BASE
    for trainer in ("llava", "seq2seq"):
        first, last = re.search(rf"^\s+{trainer}\s+loss (\S+) -> (\S+)\s+model", out, re.MULTILINE).groups()
        assert float(last) < float(first), f"{trainer}: loss {first} -> {last} did not fall"
        assert f"/workspace/outputs/demo/runs/tiny-{trainer}" in out  # trained inside the image, in its work folder
    assert "deepspeed/zero3.json on 4 GPU(s): consistent" in out
    assert "deepspeed/zero2.json on 4 GPU(s): consistent" in out


def test_image_pip_freeze_equals_pyproject_pins(smoke):
    done = in_image("freeze", "--all", entrypoint="pip")  # --all: setuptools (a build requirement) too
    assert done.returncode == 0, done.stderr
    frozen = dict(line.split("==", 1) for line in done.stdout.splitlines() if "==" in line)
    frozen = {normal(name): version for name, version in frozen.items()}
    pins = PROJECT["project"]["dependencies"] + PROJECT["build-system"]["requires"]
    for pin in pins:
        name, version = pin.split("==")
        installed = frozen.get(normal(name))
        assert installed is not None, f"{name} is pinned but not in the image"
        expected = f"{version}+cpu" if normal(name) == "torch" else version  # the CPU build of the pinned torch
        assert installed == expected, f"{name}: the image has {installed}, pyproject.toml pins {version}"
    # The `gpu` extra (Triton kernels, bitsandbytes) is the CUDA image's only: the CPU build leaves it out.
    for pin in PROJECT["project"]["optional-dependencies"]["gpu"]:
        assert normal(pin.split("==")[0]) not in frozen, f"{pin}: a GPU-only package in the CPU image"
    # The freeze the build wrote (plain `pip freeze`: without pip and setuptools) is what is installed.
    kept = in_image("/opt/vtt/image-freeze.txt", entrypoint="cat").stdout.splitlines()
    plain = [line for line in done.stdout.splitlines() if not line.startswith(("pip==", "setuptools=="))]
    assert sorted(kept) == sorted(plain)


def test_no_process_in_the_image_runs_as_root(smoke):
    processes = smoke["processes"]
    commands = " ".join(args for _, _, args in processes)
    # The watch saw the demo's real process tree: vtt, the deepspeed launcher and both trainers.
    assert "deepspeed.launcher" in commands or "deepspeed/launcher" in commands, commands[-2000:]
    assert "vtt.train.llava" in commands and "vtt.train.seq2seq" in commands, commands[-2000:]
    as_root = [process for process in processes if {"root", "0"} & set(process[:2])]
    assert not as_root, f"processes running as root in the image: {as_root}"
    user = podman("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip()
    assert user and user not in ("root", "0")
    done = in_image("-c", "import os; print(os.getuid(), os.geteuid())", entrypoint="python")
    assert done.stdout.split() == [user, user]


def test_image_hf_home_is_writable_by_its_user_and_by_any_uid(smoke):
    probe = (
        "import os, pathlib; home = pathlib.Path(os.environ['HF_HOME']); (home / 'hub').mkdir(exist_ok=True); "
        "(home / 'hub' / 'probe').write_text('ok'); print(home, (home / 'hub' / 'probe').read_text())"
    )
    for options in ((), ("--user", "4242:4242")):  # clusters run the image as the submitting user
        done = in_image("-c", probe, entrypoint="python", options=options)
        assert done.returncode == 0, f"{options}: {done.stderr[-2000:]}"
        assert done.stdout.split() == ["/cache/huggingface", "ok"], done.stdout


def test_image_offline_start_up_check_fails_fast_naming_what_is_missing(smoke):
    started = time.monotonic()
    done = in_image(
        "run", "--config", "jobs/llava.yaml", "--gpus", "1",
        options=("--network", "none", "-e", "HF_HUB_OFFLINE=1", "-w", "/opt/vtt"),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    text = done.stdout + done.stderr
    assert done.returncode == 2, text[-3000:]
    assert elapsed < 60, f"the check took {elapsed:.0f} s"
    model = yaml.safe_load((ROOT / "jobs" / "llava.yaml").read_text())["model_name_or_path"]
    assert f"model_name_or_path: model {model}" in text and "not in the cache" in text, text[-3000:]
    assert "/cache/huggingface/hub" in text and "make stage CONFIG=" in text
    assert "Traceback" not in text


def test_docker_runtime_job_runs_in_the_image_through_slurm_and_saves_its_model(smoke, slurm, demo_inputs, tmp_path):
    """A profile with the `docker` runtime; podman stands in for the docker CLI (tools/podman as `docker` on the
    job's PATH: it takes the rendered `docker run --gpus all --network host --ipc host --user ... -v ... -e ...`
    as it is). The job is submitted as root, so its container runs as root (`--user $(id -u)`)."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "docker").symlink_to(ROOT / "tools" / "podman")
    demo = demo_inputs["manifest"].parents[1]  # models/ and videos/ of the session's demo inputs
    profile = yaml.safe_load((ROOT / "jobs" / "clusters" / "ci.yaml").read_text())
    profile["description"] = "the ci profile, training in the image built by make image-smoke"
    profile["container"] = {"runtime": "docker", "image": IMAGE, "binds": [f"{demo}:{demo}:ro"]}
    (tmp_path / "image.yaml").write_text(yaml.safe_dump(profile))
    # The job's folder (the container's working folder, bound at the same path) holds the run config and the
    # DeepSpeed file it names, as a user's checkout does.
    (tmp_path / "jobs").mkdir()
    shutil.copy(ROOT / "jobs" / "tiny-seq2seq.yaml", tmp_path / "jobs")
    shutil.copytree(ROOT / "deepspeed", tmp_path / "deepspeed")
    out = tmp_path / "run"
    env = dict(slurm, PATH=f"{shim}:{VENV / 'bin'}:{os.environ['PATH']}")
    command = [str(VENV / "bin" / "vtt"), "submit", "--cluster", "image.yaml", "--config", "jobs/tiny-seq2seq.yaml"]
    command += ["--gpus", "1", *tiny_run(demo_inputs, "seq2seq"), "--output_dir", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = re.search(r"submitted job (\d+)", done.stdout).group(1)
    log = tmp_path / re.search(r"^log:\s+(\S+)", done.stdout, re.MULTILINE).group(1)
    scripts = [path for path in tmp_path.rglob("*.sh") if "docker run" in path.read_text()]
    assert scripts, f"no rendered script with `docker run` under {tmp_path}"
    state = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
        found = re.search(r"JobState=(\S+)", shown.stdout)
        if found and found.group(1) in DONE:
            state = found.group(1)
            break
        time.sleep(2)
    else:
        subprocess.run(["scancel", job_id], env=env)
    text = log.read_text() if log.exists() else f"(no log at {log})"
    assert state == "COMPLETED", f"job {job_id}: {state}\n{text[-4000:]}"
    # The trainer ran in the image: its python is the image's venv, which this machine does not have.
    assert "cmd = /opt/venv/bin/python3 -u -m deepspeed.launcher.launch" in text, text[-4000:]
    assert "spawned with command: ['/opt/venv/bin/python3', '-u', '-m', 'vtt.train.seq2seq'" in text, text[-4000:]
    assert not Path("/opt/venv").exists()
    assert (out / "model.safetensors").exists() and (out / "config.json").exists(), sorted(os.listdir(out))
    assert re.search(r"^end: \S+ exit 0$", text, re.MULTILINE)
