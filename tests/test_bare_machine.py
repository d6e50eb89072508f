"""`make test` on a bare machine: as root it installs the system packages the suite uses; as anyone else it
stops at once, before the venv is built, and prints the one command that installs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("slurm-wlm", "munge", "shellcheck", "chromium")


def test_make_test_as_a_user_without_the_packages_stops_at_once_naming_the_command():
    tmp_path = Path(tempfile.mkdtemp(prefix="vtt-bare-"))  # under /tmp, where another user can reach it
    # A PATH holding only what make and the script run, so slurmctld, munged, shellcheck and chromium are missing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "bash", "env", "sh", "grep", "sed", "awk", "test"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    tmp_path.chmod(0o755)
    started = time.monotonic()
    # As root, become nobody for the run; anyone else is not root already.
    as_user = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*as_user, shutil.which("make"), "-C", str(ROOT), "test"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path), "VENV": str(tmp_path / "venv")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 30 and not (tmp_path / "venv").exists(), "it must stop before the venv"
    assert "The test suite needs system packages this machine lacks" in done.stderr
    command = next(line for line in done.stderr.splitlines() if "sudo sh -c" in line)
    for package in PACKAGES:
        assert package in command
    assert "apt-get install" in command
    shutil.rmtree(tmp_path)
