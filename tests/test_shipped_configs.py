"""Every run config in jobs/ trains on its tiny twin through its own save path, then resumes.

    .venv/bin/pytest tests/test_shipped_configs.py

The twin is the shipped file itself, with only what a CPU cannot run or a test cannot wait for replaced:
the model and data (the demo's tiny random ones), the batch (2 a process), bf16 (CPU), the workers (1),
and the steps: it saves at its second step where the real run saves at its 200th. Everything else — the
DeepSpeed file (ZeRO-3 for the 7B), save_total_limit, the trainer's own save code (TRL's model card) —
is the shipped config's. A first start trains 3 steps and saves checkpoint-2; a second start with 4 steps
resumes from it. Every llava run that saved a checkpoint once crashed at its first save (TRL's README.md
left in the staging folder), and no test saved a llava checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILY_CONFIGS, ROOT, SAVE_STEPS, train, twin

from vtt.config import read_yaml
from vtt.exits import Exit
from vtt.models import adapters

pytestmark = pytest.mark.slow

# The video families' configs train on their family's tiny model in tests/test_video_families.py.
SHIPPED = sorted(set((ROOT / "jobs").glob("*.yaml")) - {ROOT / "jobs" / name for name in FAMILY_CONFIGS.values()})


def quantised(config: Path) -> bool:
    shipped = read_yaml(config)
    return bool(shipped.get("load_in_4bit") or shipped.get("load_in_8bit"))


@pytest.mark.parametrize("config", SHIPPED, ids=[c.stem for c in SHIPPED])
def test_shipped_config_saves_a_checkpoint_and_resumes_from_it(config, demo_inputs, tmp_path):
    relative = str(config.relative_to(ROOT))
    out = tmp_path / "run"
    if quantised(config) and not torch.cuda.is_available():  # bitsandbytes needs CUDA: vtt run must refuse it
        command = [sys.executable, "-m", "vtt.cli", "run", "--config", relative, "--gpus", "1"]
        done = subprocess.run(
            [*command, *twin(config, demo_inputs, out, steps=3)], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == Exit.BAD_INPUT, done.stdout[-3000:] + done.stderr[-3000:]
        assert "(QLoRA) quantises the base model with bitsandbytes, which needs a CUDA GPU" in done.stderr
        assert "Loading weights" not in done.stdout + done.stderr and not out.exists()
        return
    first = train(relative, 1, twin(config, demo_inputs, out, steps=3))
    checkpoint = out / f"checkpoint-{SAVE_STEPS}"
    assert (checkpoint / "vtt-checkpoint.json").is_file(), first.stdout[-3000:]
    assert not (out / ".partial").exists(), "the staging folder outlived the save"
    if read_yaml(config).get("use_peft"):  # an adapter run saves the adapter, not the model
        assert adapters.is_adapter(out) and (out / adapters.ADAPTER_WEIGHTS).is_file()
        assert not (out / "model.safetensors").exists()
    else:
        assert (out / "model.safetensors").is_file()
    if read_yaml(config)["trainer"] == "llava":  # TRL's model card, written during each save, lands in output_dir
        assert (out / "README.md").is_file()
    limit = read_yaml(config).get("save_total_limit")
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(kept) <= (limit or len(kept)), kept

    newest = out / "checkpoint-3"  # the Trainer saves at the last step too
    assert (newest / "vtt-checkpoint.json").is_file(), kept

    second = train(relative, 1, twin(config, demo_inputs, out, steps=4))
    log = second.stdout + second.stderr
    assert f"resuming from {newest}" in log, log[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]


def test_every_shipped_config_has_a_twin():
    """A config added to jobs/ is covered by the test above (or the families') without editing it; the 7B's
    ZeRO-3 among them."""
    names = {c.name for c in SHIPPED}
    assert {c.name for c in (ROOT / "jobs").glob("*.yaml")} == names | set(FAMILY_CONFIGS.values())
    assert {"llava.yaml", "llava-0.5b.yaml", "seq2seq.yaml", "tiny-llava.yaml", "tiny-seq2seq.yaml"} <= names
    assert read_yaml(ROOT / "jobs" / "llava.yaml")["deepspeed"].endswith("zero3.json")
