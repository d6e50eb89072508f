"""`vtt demo`: the embedded default trains both tiny models and reports falling losses."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_trains_both_trainers_and_prints_falling_losses(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vtt.cli", "demo", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reported = dict(re.findall(r"^\s+(llava|seq2seq)\s+loss (\S+ -> \S+)", done.stdout, re.M))
    assert set(reported) == {"llava", "seq2seq"}, done.stdout[-2000:]
    for trainer, change in reported.items():
        first, last = (float(v) for v in change.split(" -> "))
        assert last < first, (trainer, change)
        assert (tmp_path / "runs" / f"tiny-{trainer}" / "model.safetensors").is_file()
