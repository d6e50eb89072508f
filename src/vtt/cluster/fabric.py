"""All-reduce self-test of a job's GPUs and network: bus bandwidth, and a failure where NCCL fell back to TCP.

    torchrun --nproc_per_node 4 -m vtt.cluster.fabric [--expect-infiniband] [--sizes-mb 16 256]
    make nccl-check GPUS=2                        # here, with torchrun
    make nccl-check CLUSTER=x NODES=2             # in a Slurm job, inside the image (docs/clusters.md)

Bandwidth is reported as nccl-tests does: algbw = bytes / time, busbw = algbw x 2(n-1)/n for an
all-reduce over n ranks, the time being the slowest rank's. On GPUs NCCL runs with NCCL_DEBUG=INFO
written to a file per process; the check reads which network NCCL chose ("Using network IB" or
"Socket") and, where InfiniBand is expected (`--expect-infiniband` or VTT_EXPECT_INFINIBAND=1, set by
a cluster profile with InfiniBand), fails when /dev/infiniband is not bound into the container or NCCL
used TCP sockets. Without GPUs it runs gloo on CPU: the launch path and the arithmetic, not the fabric.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Lines NCCL prints at NCCL_DEBUG=INFO (NCCL 2.x): the network it chose, the devices it found on it.
USING_NETWORK = re.compile(r"NCCL INFO Using network (.+?)\s*$", re.MULTILINE)
NET_DEVICES = re.compile(r"NCCL INFO NET/(\w+) ?: Using (.+?)\s*$", re.MULTILINE)
NET_PLUGIN = re.compile(r"NCCL INFO (NET/Plugin.*?)\s*$", re.MULTILINE)
TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass
class NcclNetwork:
    """What NCCL's INFO log says about the network of one process."""

    network: str | None = None  # "IB", "Socket", a plugin's name ("AWS Libfabric", "IBext_v8", ...)
    devices: dict[str, str] = field(default_factory=dict)  # transport -> devices, e.g. IB -> "[0]mlx5_0:1/IB"
    plugin: list[str] = field(default_factory=list)


def read_nccl_log(text: str) -> NcclNetwork:
    found = NcclNetwork()
    networks = USING_NETWORK.findall(text)
    found.network = networks[-1] if networks else None
    found.devices = dict(NET_DEVICES.findall(text))
    found.plugin = NET_PLUGIN.findall(text)
    return found


def infiniband_devices(root: Path = Path("/dev/infiniband")) -> list[str]:
    """The verbs devices bound into this container (uverbs* is what NCCL's IB transport opens)."""
    return sorted(p.name for p in root.glob("uverbs*")) if root.is_dir() else []


def fabric_problems(net: NcclNetwork | None, expect_infiniband: bool, ib_devices: list[str]) -> list[str]:
    """Why this process's fabric is not what the profile promises (empty when it is, or nothing was promised)."""
    if not expect_infiniband:
        return []
    problems = []
    if not ib_devices:
        problems.append(
            "/dev/infiniband has no uverbs devices in this container: bind it (apptainer --bind /dev/infiniband, "
            "docker --device /dev/infiniband, pyxis does by default) or the profile should not claim InfiniBand"
        )
    if net is None:
        problems.append("no NCCL log to read: InfiniBand can only be checked on GPUs with the NCCL backend")
    elif net.network is None:
        problems.append("NCCL's log names no network ('Using network ...' missing): cannot tell IB from sockets")
    elif net.network.lower().startswith("socket"):
        problems.append(
            f"NCCL fell back to TCP sockets (Using network {net.network}, devices {net.devices.get('Socket', '?')}) "
            f"where InfiniBand is expected: check libibverbs in the image, NCCL_IB_HCA, NCCL_NET and the binds"
        )
    return problems


def bus_bandwidth(size_bytes: int, seconds: float, world: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s of an all-reduce of `size_bytes` over `world` ranks taking `seconds`."""
    algbw = size_bytes / seconds / 1e9
    return algbw, algbw * 2 * (world - 1) / world if world > 1 else algbw


def time_all_reduce(size_mb: float, iters: int, warmup: int, device) -> float:
    """Seconds per all-reduce of `size_mb` MB of fp32, the slowest rank's time."""
    import torch
    import torch.distributed as dist

    tensor = torch.ones(int(size_mb * 1e6 / 4), dtype=torch.float32, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        dist.all_reduce(tensor)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(tensor)
    sync()
    elapsed = torch.tensor([(time.perf_counter() - start) / iters], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed.item())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vtt.cluster.fabric", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", help="message sizes (default 16 256 GPU, 1 8 CPU)")
    parser.add_argument("--iters", type=int, default=20, help="timed all-reduces per size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed all-reduces per size first")
    parser.add_argument(
        "--expect-infiniband",
        action="store_true",
        default=os.environ.get("VTT_EXPECT_INFINIBAND", "").upper() in TRUE,
        help="fail unless /dev/infiniband is bound and NCCL uses it (default: VTT_EXPECT_INFINIBAND)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here (rank 0)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher passes it
    # Under `vtt submit --module vtt.cluster.fabric` the job passes the run config's arguments too: not ours.
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import torch.distributed as dist

    # Outside a launcher: one process, so `python -m vtt.cluster.fabric` still checks this machine's binds.
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:
        from vtt.cluster.local import free_port

        os.environ["MASTER_PORT"] = str(free_port())
    gpu = torch.cuda.is_available()
    log_dir = None
    if gpu:
        # NCCL reads these when it initialises: set them before the first collective.
        log_dir = Path(tempfile.mkdtemp(prefix="vtt-fabric-"))
        os.environ["NCCL_DEBUG"] = "INFO"
        os.environ.setdefault("NCCL_DEBUG_SUBSYS", "INIT,NET")
        os.environ["NCCL_DEBUG_FILE"] = str(log_dir / "nccl.%h.%p.log")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = args.sizes_mb or ([16.0, 256.0] if gpu else [1.0, 8.0])
    results = []
    for size in sizes:
        seconds = time_all_reduce(size, args.iters, args.warmup, device)
        algbw, busbw = bus_bandwidth(int(size * 1e6 / 4) * 4, seconds, world)
        results.append({"size_mb": size, "time_ms": seconds * 1e3, "algbw_gbps": algbw, "busbw_gbps": busbw})

    net = read_nccl_log("".join(p.read_text(errors="replace") for p in log_dir.glob("*.log"))) if log_dir else None
    ib = infiniband_devices()
    mine = {
        "rank": rank,
        "host": os.uname().nodename,
        "network": net.network if net else None,
        "devices": net.devices if net else {},
        "infiniband": ib,
        "problems": fabric_problems(net, args.expect_infiniband, ib),
    }
    everyone: list[dict] = [{} for _ in range(world)]
    dist.all_gather_object(everyone, mine)
    dist.destroy_process_group()
    problems = [f"rank {r['rank']} on {r['host']}: {p}" for r in everyone for p in r["problems"]]
    if rank == 0:
        report = {
            "backend": "nccl" if gpu else "gloo",
            "world_size": world,
            "nodes": len({r["host"] for r in everyone}),
            "device": torch.cuda.get_device_name(device) if gpu else "cpu",
            "expect_infiniband": args.expect_infiniband,
            "networks": sorted({str(r["network"]) for r in everyone}),
            "results": results,
            "problems": problems,
        }
        print(f"vtt fabric: {report['backend']}, {world} ranks on {report['nodes']} node(s), {report['device']}")
        print(f"  network (NCCL): {', '.join(report['networks'])}; /dev/infiniband: {mine['infiniband'] or 'none'}")
        for row in results:
            print(
                f"  all-reduce {row['size_mb']:8.1f} MB  {row['time_ms']:9.3f} ms  "
                f"algbw {row['algbw_gbps']:8.2f} GB/s  busbw {row['busbw_gbps']:8.2f} GB/s"
            )
        for line in problems:
            print(f"  FAIL {line}")
        print("vtt-fabric-json " + json.dumps(report))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
