"""No run dies of one sample: a training run whose micro batch is one broken clip goes on, and says so.

.venv/bin/pytest tests/test_bad_samples_in_runs.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, logged_losses, manifest_with_broken_clips, tiny_run, train

from vtt.outputs import claim_output

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


def vtt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vtt.cli", *args], cwd=ROOT, capture_output=True, text=True)


def user_data(demo_inputs, tmp_path):
    """A user's data folder: the demo's clips and manifest, and a file of their own."""
    data = tmp_path / "data"
    shutil.copytree(demo_inputs["manifest"].parent, data)
    (data / "notes.txt").write_text("mine")
    return data, sorted(p.name for p in data.iterdir())


def test_a_run_whose_output_dir_holds_its_data_is_refused_and_the_data_kept(demo_inputs, tmp_path):
    data, before = user_data(demo_inputs, tmp_path)
    overrides = [*tiny_run(demo_inputs, "llava"), "--dataset", str(data / "manifest.jsonl"), "--max_steps", "1"]
    done = vtt("run", "--config", "jobs/tiny-llava.yaml", "--gpus", "1", *overrides, "--output_dir", str(data))
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"output_dir {data}: holds" in done.stderr and "give output_dir a new folder" in done.stderr
    assert sorted(p.name for p in data.iterdir()) == before


def test_a_run_into_a_folder_vtt_did_not_write_is_refused(demo_inputs, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    overrides = [*tiny_run(demo_inputs, "llava"), "--max_steps", "1", "--output_dir", str(theirs)]
    done = vtt("run", "--config", "jobs/tiny-llava.yaml", "--gpus", "1", *overrides)
    assert done.returncode == 2 and "holds files that vtt did not write" in done.stderr, done.stderr[-2000:]
    assert (theirs / "thesis.tex").read_text() == "years of work"


def test_a_second_run_on_one_output_dir_is_refused_while_the_first_runs(demo_inputs, tmp_path):
    out = tmp_path / "run"
    overrides = [*tiny_run(demo_inputs, "llava"), "--max_steps", "1", "--output_dir", str(out)]
    with claim_output(out, "run", option="output_dir"):  # the first run, holding its output_dir
        done = vtt("run", "--config", "jobs/tiny-llava.yaml", "--gpus", "1", *overrides)
    assert done.returncode == 2 and "is writing it now" in done.stderr, done.stderr[-2000:]


def test_predict_refuses_to_write_its_answers_over_the_manifest(demo_inputs, tmp_path):
    data, _ = user_data(demo_inputs, tmp_path)
    manifest = data / "manifest.jsonl"
    before = manifest.read_text()
    model = str(demo_inputs["seq2seq"])
    done = vtt("predict", "--model", model, "--manifest", str(manifest), "--out", str(manifest))
    assert done.returncode == 2 and "is the file `vtt predict` reads" in done.stderr, done.stderr[-2000:]
    assert manifest.read_text() == before
