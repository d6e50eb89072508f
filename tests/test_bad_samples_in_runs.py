"""No run dies of one sample: a training run whose micro batch is one broken clip goes on, and says so.

.venv/bin/pytest tests/test_bad_samples_in_runs.py
"""

from __future__ import annotations

import json

import pytest
from conftest import logged_losses, manifest_with_broken_clips, tiny_run, train

pytestmark = pytest.mark.slow


def test_a_micro_batch_of_one_broken_clip_is_refilled_and_the_run_trains_to_the_end(demo_inputs, tmp_path):
    manifest, _ = manifest_with_broken_clips(demo_inputs, tmp_path, broken=1)
    out = tmp_path / "run"
    overrides = [*tiny_run(demo_inputs, "llava"), "--dataset", str(manifest), "--output_dir", str(out)]
    # Micro batch 1 for a whole epoch of the 8 clips: one step's whole batch is the broken clip (it ended runs).
    steps = ["--per_device_train_batch_size", "1", "--global_batch_size", "1", "--max_steps", "8"]
    done = train("jobs/tiny-llava.yaml", 1, [*overrides, *steps, "--max_reject_ratio", "0.5"])
    assert len(logged_losses(out)) == 8
    [reject] = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 1 and reject["id"] == "clip-0"
    assert "refilled with line 2" in done.stderr
