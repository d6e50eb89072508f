"""`vtt run`'s launch: the processes train on the devices the job was given."""

from __future__ import annotations

import os

import pytest
from conftest import tiny_run, train

from vtt.cluster.local import local_devices


def test_devices_follow_cuda_visible_devices():
    assert local_devices(2, {}) == [0, 1]
    assert local_devices(2, {"CUDA_VISIBLE_DEVICES": "2,3"}) == [2, 3]
    assert local_devices(1, {"CUDA_VISIBLE_DEVICES": "2, 3"}) == [2]
    assert local_devices(1, {"CUDA_VISIBLE_DEVICES": "GPU-8f1c,GPU-77aa"}) == ["GPU-8f1c"]
    with pytest.raises(ValueError, match=r"--gpus 3, but CUDA_VISIBLE_DEVICES=2,3 lists 2: pass --gpus 2"):
        local_devices(3, {"CUDA_VISIBLE_DEVICES": "2,3"})


def test_a_job_given_devices_2_and_3_trains_on_them(demo_inputs, tmp_path, monkeypatch):
    # DeepSpeed's runner with --num_gpus would have set CUDA_VISIBLE_DEVICES=0,1 for the trainers.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    overrides = [*tiny_run(demo_inputs, "seq2seq"), "--max_steps", "1", "--output_dir", str(tmp_path / "run")]
    done = train("jobs/tiny-seq2seq.yaml", 2, overrides)
    assert "Setting CUDA_VISIBLE_DEVICES=2,3" in done.stdout + done.stderr
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
