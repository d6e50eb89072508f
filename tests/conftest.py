"""Shared fixtures: tiny random models and synthetic videos, built once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vtt  # noqa: F401  first: its torchvision guard must be in place before any test imports transformers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> dict[str, Path]:
    """Tiny LLaVA, tiny NLLB and 8 synthetic clips with their manifest (as `vtt demo` builds them)."""
    from vtt.demo import build_inputs

    return build_inputs(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")  # per module: a module may write beside it
def held_out(demo_inputs, tmp_path_factory) -> Path:
    """A 3-clip eval split of the demo clips, in its own folder (video paths made absolute)."""
    lines = [json.loads(line) for line in demo_inputs["manifest"].read_text().splitlines()][:3]
    for line in lines:
        line["video"] = str(demo_inputs["manifest"].parent / line["video"])
    path = tmp_path_factory.mktemp("held-out") / "eval.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def tiny_run(demo_inputs: dict[str, Path], trainer: str) -> list[str]:
    """The overrides that point a tiny run config at the demo's model for `trainer` and at its clips."""
    return ["--model_name_or_path", str(demo_inputs[trainer]), "--dataset", str(demo_inputs["manifest"])]


# The tiny run config of each trainer (the demo's models), and the Auto class each trainer loads its model with.
TINY_CONFIGS = {"llava": "jobs/tiny-llava.yaml", "seq2seq": "jobs/tiny-seq2seq.yaml"}


def loader(trainer: str):
    """The transformers Auto class the trainer loads its model with (vtt's own table)."""
    import transformers

    from vtt.models.adapters import AUTO_CLASSES

    return getattr(transformers, AUTO_CLASSES[trainer])


def weight_bytes(model) -> int:
    """The bytes a model's parameters hold, with bitsandbytes' quantisation state (absmax, nested too)."""
    held = 0
    for p in model.parameters():
        held += p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:
            held += state.absmax.numel() * state.absmax.element_size()
            if state.nested:
                held += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return held


SAVE_STEPS = 2  # a twin saves at its second step where the real run saves at its 200th
# The shipped run config of each video family (trained on the family's tiny model by test_video_families).
FAMILY_CONFIGS = {
    "qwen2_5_vl": "qwen2_5_vl-7b.yaml",
    "qwen3_vl": "qwen3_vl-8b.yaml",
    "llava_onevision": "llava-onevision-7b.yaml",
    "smolvlm": "smolvlm2-2b.yaml",
}


def twin(config: Path, demo_inputs, out: Path, steps: int, model: Path | None = None) -> list[str]:
    """Overrides that make `config` a tiny run on this CPU, keeping its save settings (tests/test_shipped_configs.py
    says which); `model`: the tiny model of its family, when not the demo's."""
    from vtt.config import read_yaml

    shipped = read_yaml(config)
    saves = shipped.get("save_strategy") == "steps"
    data = tiny_run(demo_inputs, shipped["trainer"])
    return [
        *(data if model is None else ["--model_name_or_path", str(model), *data[2:]]),
        *("--output_dir", str(out), "--max_steps", str(steps), "--logging_steps", "1"),
        *("--per_device_train_batch_size", "2", "--global_batch_size", "2"),
        *("--save_steps", str(SAVE_STEPS)),
        *(() if saves else ("--save_strategy", "steps")),
        *(("--bf16", "false") if shipped.get("bf16") else ()),
        *(("--dataloader_num_workers", "1") if shipped.get("dataloader_num_workers") else ()),
        *(("--use_liger_kernel", "false") if shipped.get("use_liger_kernel") else ()),
        *(("--push_to_hub", "false") if shipped.get("push_to_hub") else ()),
    ]


def train(config: str, gpus: int, overrides: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`vtt run` as a user types it; fails the test with the output when the launch fails."""
    command = [sys.executable, "-m", "vtt.cli", "run", "--config", config, "--gpus", str(gpus), *overrides]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def logged_losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def manifest_with_broken_clips(demo_inputs, tmp_path, broken: int) -> tuple:
    """The demo's manifest with its first `broken` clips replaced by files of random bytes (real files, no video)."""
    import shutil

    from videos import random_bytes

    lines = demo_inputs["manifest"].read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for i, row in enumerate(rows):
        source = demo_inputs["manifest"].parent / row["video"]
        target = tmp_path / Path(row["video"]).name
        if i < broken:
            random_bytes(target, seed=i)
        else:
            shutil.copy(source, target)
        row["video"], row["id"] = target.name, f"clip-{i}"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest, rows


@pytest.fixture(scope="session")
def slurm() -> Iterator[dict[str, str]]:
    """A real Slurm on this machine (tests/slurm_cluster.py: 2 nodes, 8 fake GPUs each), started once per
    session and stopped after; the environment its clients (sbatch, make submit) need."""
    import shutil
    import tempfile

    from slurm_cluster import start, stop

    root = Path(tempfile.mkdtemp(prefix="vtt-slurm-"))
    try:
        env = start(root)
        yield dict(os.environ, **env)
    finally:
        stop(root)
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """tests/test_image.py runs last: its session fixture builds the image (the suite's longest step), which
    nothing else needs, and a failure elsewhere (with -x) then stops the run before that build.

    Under `make test` the suite runs in two processes (pytest-xdist, `--dist loadfile`: a file's tests stay
    in one process, so the image is built once). Each process starts its own test Slurm when it needs one:
    tests/slurm_cluster.py gives each its own munge, state folder and free ports."""
    items.sort(key=lambda item: item.path.name == "test_image.py")  # stable: every other order is kept
