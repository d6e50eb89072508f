"""A real Slurm (Debian's slurm-wlm 22.05 + munge) on this machine, for the job tests.

    python tests/slurm_cluster.py start DIR [--nodes 2] [--gpus 8]   # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py stop DIR

The tests start it once per session (fixture `slurm` in tests/conftest.py) and stop it after. Everything
lives under DIR: its own munged (own key and socket, so it never touches a system munge), slurmctld and
one slurmd per node on ports picked free, and fake GPUs (character devices; Slurm skips regular files and
CUDA_VISIBLE_DEVICES stays empty). Clients find it through SLURM_CONF. It runs as root (NOTES.md: the
recipe, and why each setting is here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOSTS_LINE_MARK = "# vtt test Slurm nodes"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_names(nodes: int) -> list[str]:
    return [f"vtt{i}" for i in range(1, nodes + 1)]


def ensure_hosts(names: list[str]) -> None:
    """Node names must resolve (jobs take the master address from SLURM_JOB_NODELIST): add them to /etc/hosts.

    All nodes are this one host, so they all point at 127.0.0.1. Idempotent: a name already there is kept.
    """
    hosts = Path("/etc/hosts")
    known = set(hosts.read_text().split())
    missing = [name for name in names if name not in known]
    if missing:
        with hosts.open("a") as sink:
            sink.write(f"127.0.0.1 {' '.join(missing)}  {HOSTS_LINE_MARK}\n")


def slurm_conf(root: Path, nodes: int, gpus: int) -> str:
    host = socket.gethostname()
    lines = [
        "ClusterName=vtt-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire=10: a requeued job would otherwise wait ~140 s; socket: our own munged, not the system's.
        f"AuthInfo=cred_expire=10,socket={root}/munge/munge.socket",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        "SlurmdParameters=config_overrides",  # declare more CPUs/memory/GPUs than this 2-core host has
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "GresTypes=gpu",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "SchedulerParameters=sched_interval=2,bf_interval=1",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "MinJobAge=600",  # finished jobs stay visible to `scontrol show job` (no accounting database here)
        # Job ids new to each start: jobs log with --open-mode=append (requeued starts share one log), and a
        # job 1 of an earlier test session must not find its old logs/<name>-1.out to append to.
        f"FirstJobId={int(time.time()) % 50_000_000 + 1}",
        "KillWait=5",
    ]
    for name in node_names(nodes):
        lines.append(
            f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
            f"CPUs=128 RealMemory=1000000 Gres=gpu:h100:{gpus} Feature=ib,h100 State=UNKNOWN"
        )
    # debug for the ci profile; gpu and batch are the partitions the shipped example profiles name, so that
    # `sbatch --test-only` can judge their scripts here. Sizes (CPUs, memory, 8 GPUs of type h100, the ib
    # feature) match the examples; config_overrides lets slurmd declare more than this host has.
    for partition in ("debug", "gpu", "batch"):
        default = " Default=YES" if partition == "debug" else ""
        lines.append(f"PartitionName={partition} Nodes=ALL{default} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def gres_conf(root: Path, nodes: int, gpus: int) -> str:
    lines = []
    for name in node_names(nodes):
        devices = root / "dev" / name
        devices.mkdir(parents=True, exist_ok=True)
        for index in range(gpus):
            device = devices / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o600 | 0o020000, os.makedev(195, index))  # a character device, as a GPU is
        lines.append(f"NodeName={name} Name=gpu Type=h100 File={devices}/nvidia[0-{gpus - 1}]")
    return "\n".join(lines) + "\n"


def wait_for(condition, what: str, timeout: float = 30.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"test Slurm: {what} did not happen in {timeout:.0f} s\n{tail}")


def alive(pid_file: Path) -> bool:
    """The pid file names a running process (not a zombie: stopped daemons linger as Z)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state != "Z"


def start(root: Path, nodes: int = 2, gpus: int = 8) -> dict[str, str]:
    """Start munged, slurmctld and `nodes` slurmd under `root`; returns the environment clients need."""
    root = root.resolve()
    if (root / "slurm.conf").exists() and alive(root / "slurmctld.pid"):
        raise RuntimeError(f"a test Slurm already runs from {root}: stop it first (`{sys.argv[0]} stop {root}`)")
    for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise RuntimeError(f"{tool} is not installed: apt-get install -y slurm-wlm munge (as root: make system)")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged runs as the munge user and must reach its folder
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    munge = root / "munge"
    munge.mkdir(exist_ok=True)
    munge.chmod(0o755)  # clients need execute permission on the socket folder
    key = munge / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    subprocess.run(
        [
            "runuser", "-u", "munge", "--", "/usr/sbin/munged",
            f"--socket={munge}/munge.socket", f"--key-file={key}", f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed",
        ],
        check=True,
    )  # fmt: skip
    wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket", log=munge / "munged.log")

    names = node_names(nodes)
    ensure_hosts(names)
    conf = root / "slurm.conf"
    (root / "gres.conf").write_text(gres_conf(root, nodes, gpus))
    conf.write_text(slurm_conf(root, nodes, gpus))
    env = dict(os.environ, SLURM_CONF=str(conf))
    # -c: clear state left by an earlier run in the same folder (no stale jobs); -i: ignore missing state.
    subprocess.run(["/usr/sbin/slurmctld", "-c", "-i", "-f", str(conf)], check=True, env=env)
    # slurmctld returns before its pid file exists (NOTES.md): poll it.
    wait_for(lambda: alive(root / "slurmctld.pid"), "slurmctld start", log=root / "slurmctld.log")
    for name in names:
        (root / "spool" / name).mkdir(exist_ok=True)
        subprocess.run(["/usr/sbin/slurmd", "-N", name, "-f", str(conf)], check=True, env=env)

    def idle() -> bool:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=env)
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return all(states.get(name) == "idle" for name in names)

    wait_for(idle, f"nodes {', '.join(names)} idle", timeout=60, log=root / "slurmctld.log")
    return {"SLURM_CONF": str(conf)}


def cancel_jobs(root: Path) -> None:
    """Cancel every job still queued or running and wait until Slurm has killed their processes: a job left
    behind when the daemons stop keeps its trainers running (and the machine busy) after the tests."""
    env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))
    subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)

    def none_left() -> bool:
        listed = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
        return listed.returncode == 0 and not listed.stdout.strip()

    wait_for(none_left, "cancelled jobs ending", timeout=60, log=root / "slurmctld.log")


def stop(root: Path) -> None:
    """Cancel the jobs, stop every daemon started from `root` (by the pid files they wrote), and wait until
    they are gone."""
    root = root.resolve()
    if alive(root / "slurmctld.pid"):
        cancel_jobs(root)
    pid_files = [*sorted(root.glob("slurmd-*.pid")), root / "slurmctld.pid", root / "munge" / "munged.pid"]
    for pid_file in pid_files:
        if alive(pid_file):
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while alive(pid_file) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid_file):
                os.kill(pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("root", type=Path)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs per node")
    args = parser.parse_args()
    if args.action == "start":
        env = start(args.root, args.nodes, args.gpus)
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
    else:
        stop(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
