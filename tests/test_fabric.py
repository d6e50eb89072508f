"""vtt.cluster.fabric: the all-reduce self-test under the launchers jobs use (gloo on CPU here), and its verdicts.

The NCCL log read here (tests/data/nccl-h100-socket.log) is an excerpt of the one NCCL 2.28.9 wrote when
vtt.cluster.fabric ran on a 2x H100 host without InfiniBand (docs/clusters.md, "What ran where").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtt.cluster.fabric import bus_bandwidth, fabric_problems, read_nccl_log

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "deepspeed": [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"],
}


def report_of(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("vtt-fabric-json "))
    return json.loads(line.removeprefix("vtt-fabric-json "))


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_fabric_reports_bus_bandwidth_of_two_processes_under_each_launcher(launcher, tmp_path):
    command = [*LAUNCHERS[launcher], "--module" if launcher == "deepspeed" else "-m", "vtt.cluster.fabric"]
    command += ["--sizes-mb", "1", "--iters", "3", "--warmup", "1"]
    if launcher == "deepspeed":
        from vtt.cluster.local import free_port

        command[command.index("--num_gpus") : command.index("--num_gpus")] = ["--master_port", str(free_port())]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = report_of(done.stdout)
    assert report["backend"] == "gloo" and report["world_size"] == 2 and report["problems"] == []
    (row,) = report["results"]
    assert row["size_mb"] == 1.0 and row["busbw_gbps"] > 0
    assert "busbw" in done.stdout


def test_fabric_fails_where_infiniband_is_expected_but_not_bound_into_the_container(tmp_path):
    env = dict(os.environ, VTT_EXPECT_INFINIBAND="1")
    done = subprocess.run(
        [sys.executable, "-m", "vtt.cluster.fabric", "--sizes-mb", "1", "--iters", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "/dev/infiniband" in done.stdout


def test_nccl_log_of_a_socket_fallback_fails_where_infiniband_is_expected():
    log = (ROOT / "tests" / "data" / "nccl-h100-socket.log").read_text()
    net = read_nccl_log(log)
    assert net.network == "Socket" and net.devices["Socket"].startswith("[0]eth0")
    (problem,) = fabric_problems(net, expect_infiniband=True, ib_devices=["uverbs0"])
    assert "fell back to TCP sockets" in problem
    assert fabric_problems(net, expect_infiniband=False, ib_devices=[]) == []


def test_nccl_log_naming_infiniband_passes():
    log = "host:1:1 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>\n"
    log += "host:1:1 [0] NCCL INFO Using network IB\n"
    net = read_nccl_log(log)
    assert net.network == "IB" and fabric_problems(net, expect_infiniband=True, ib_devices=["uverbs0"]) == []


def test_bus_bandwidth_follows_nccl_tests_for_all_reduce():
    assert bus_bandwidth(8_000_000_000, 1.0, 8) == pytest.approx((8.0, 14.0))
    assert bus_bandwidth(1_000_000_000, 0.5, 2) == pytest.approx((2.0, 2.0))
