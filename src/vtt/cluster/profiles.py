"""Cluster profiles (`jobs/clusters/<name>.yaml`): what a cluster offers and how jobs run on it.

    profile = load_profile("jobs/clusters/ci.yaml")

A profile is flat YAML validated against the `Profile` dataclass below (one field, one meaning, help on
each); an unknown key, a wrong type or a value that would break the job script is a ValueError that names
the file, the key, the value and the fix. Validation has no side effects. `vtt render` turns a profile and a
run config into a job script (vtt.cluster.jobs).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vtt.config import read_yaml
from vtt.values import refuse_tokens

RUNTIMES = ("none", "apptainer", "docker", "pyxis")
# Names that hold secrets: they are read from the environment at run time, never written into a profile or
# a rendered script (sbatch passes the submitting shell's environment to the job).
# A whole word of a name (HF_TOKEN, --hub_token, WANDB_API_KEY), not a part of one: max_visual_tokens is a count.
SECRET_NAME = re.compile(
    r"(?:^|[_-])(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIALS?)(?:$|[_-])", re.IGNORECASE
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOG_DIR = re.compile(r"[A-Za-z0-9_./-]+")
SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+")


@dataclass
class Container:
    """The container every node's launcher runs in (or none: the job uses the Python on the nodes' PATH)."""

    runtime: Literal["none", "apptainer", "docker", "pyxis"] = field(
        default="none",
        metadata={
            "help": "apptainer: `apptainer exec --nv --bind ...`; pyxis: `srun --container-image ...` (enroot); "
            "docker: `docker run --gpus all ...`; none: bare."
        },
    )
    image: str | None = field(
        default=None,
        metadata={"help": "apptainer: a .sif path; pyxis: a .sqsh path or registry#image; docker: an image name."},
    )
    binds: list[str] = field(
        default_factory=list,
        metadata={"help": "host[:container[:options]] mounts. The working directory, hf_home and scratch are added."},
    )


@dataclass
class Profile:
    """A cluster: its scheduler settings, its GPUs, and the environment jobs run in."""

    description: str = field(default="", metadata={"help": "One line shown in the job script's header."})
    scheduler: Literal["slurm", "local"] = field(
        default="slurm", metadata={"help": "slurm: an sbatch script; local: a bash script that runs `vtt run` here."}
    )
    partition: str | None = field(default=None, metadata={"help": "sbatch --partition."})
    cpu_partition: str | None = field(
        default=None,
        metadata={
            "help": "sbatch --partition of CPU-only steps (`vtt chain --prepare`). Unset: they run on partition, "
            "asking for no GPU."
        },
    )
    account: str | None = field(default=None, metadata={"help": "sbatch --account."})
    qos: str | None = field(default=None, metadata={"help": "sbatch --qos."})
    time: str | None = field(default=None, metadata={"help": "sbatch --time limit: MM, HH:MM:SS or D-HH:MM:SS."})
    nodes: int = field(default=1, metadata={"help": "Nodes when the command line gives no --nodes."})
    gpus_per_node: int | None = field(
        default=None, metadata={"help": "GPUs each node has: the most a job may ask per node (slurm: required)."}
    )
    gpu_type: str | None = field(
        default=None, metadata={"help": "GPU type as Slurm's gres names it (h100): --gpus-per-node=h100:4."}
    )
    gpu_memory_gb: float | None = field(default=None, metadata={"help": "Memory of one GPU, for the memory check."})
    cpus_per_gpu: int | None = field(default=None, metadata={"help": "CPU cores per GPU (data loader workers)."})
    mem_per_node: str | None = field(default=None, metadata={"help": "sbatch --mem (per node): 480G, or 0 for all."})
    gres_style: Literal["gpus-per-node", "gres"] = field(
        default="gpus-per-node",
        metadata={"help": "How GPUs are asked for: --gpus-per-node=N, or --gres=gpu:N on older or stricter sites."},
    )
    constraint: str | None = field(default=None, metadata={"help": "sbatch --constraint (node features: ib&h100)."})
    exclusive: bool = field(default=False, metadata={"help": "sbatch --exclusive: whole nodes, no sharing."})
    modules: list[str] = field(default_factory=list, metadata={"help": "Environment modules loaded before launch."})
    sbatch_extra: list[str] = field(
        default_factory=list, metadata={"help": "More #SBATCH options, each one like --mail-type=END."}
    )
    container: Container = field(default_factory=Container, metadata={"help": "Container runtime, image, binds."})
    python: str = field(
        default="python3",
        metadata={"help": "The interpreter with vtt installed, on the nodes' PATH or in the image (sbatch passes "
        "the submitting shell's PATH: activate the venv before submitting)."},
    )  # fmt: skip
    scratch: str | None = field(
        default=None, metadata={"help": "Node-local or fast scratch: the job's TMPDIR is a folder of the job in it."}
    )
    hf_home: str | None = field(
        default=None, metadata={"help": "HF_HOME on shared storage: the model and dataset cache every node reads."}
    )
    env: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Variables exported in the job (NCCL_*, OMP_NUM_THREADS, ...)."}
    )
    internet: bool = field(
        default=True,
        metadata={"help": "false: compute nodes run with HF_HUB_OFFLINE=1 (+ datasets/transformers) on hf_home."},
    )
    log_dir: str = field(default="logs", metadata={"help": "Where Slurm writes %x-%j.out (created before sbatch)."})
    signal_seconds: int = field(
        default=120,
        metadata={
            "help": "--signal=B:USR1@N: Slurm warns the job N seconds before its time limit; the trainers save a "
            "checkpoint at the end of the current step and the job requeues itself. Give a save time to spare."
        },
    )
    max_requeues: int = field(
        default=3,
        metadata={"help": "How often a job stopped by the warning signal requeues itself (SLURM_RESTART_COUNT)."},
    )
    # Set by load_profile, not by the file.
    name: str = field(default="", metadata={"help": "", "internal": True})
    path: str = field(default="", metadata={"help": "", "internal": True})


def keys_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _where(path: Path, key: str) -> str:
    return f"{path}: {key}"


def _check_text(path: Path, key: str, value: str) -> str:
    # A newline or other control character would end a script line early and start a new command.
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"{_where(path, key)} = {value!r} holds a control character (newline?): write it on one line")
    return value


def _convert(path: Path, key: str, value: Any, kind: Any) -> Any:
    """`value` checked against the type `kind` (and converted where YAML is loose: 80 for 80.0)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _convert(path, key, value, inner)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{_where(path, key)} = {value!r}: choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{_where(path, key)} must be a list (- item lines), found {value!r}")
        return [_convert(path, f"{key}[{i}]", item, args[0]) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{_where(path, key)} must be a mapping of NAME: value, found {value!r}")
        return {str(name): _convert(path, f"{key}.{name}", item, args[1]) for name, item in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{_where(path, key)} = {value!r}: write true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{_where(path, key)} = {value!r}: must be a whole number")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{_where(path, key)} = {value!r}: must be a number")
        return float(value)
    if kind is str:
        # Numbers are fine where a string is wanted (mem_per_node: 0, env: {OMP_NUM_THREADS: 8}).
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{_where(path, key)} = {value!r}: must be text")
        return _check_text(path, key, str(value))
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{_where(path, key)} must be a mapping with keys {', '.join(keys_of(kind))}")
        return _build(path, kind, value, prefix=f"{key}.")
    raise AssertionError(f"unhandled profile type {kind!r}")


def _build(path: Path, cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    known = keys_of(cls)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"{path}: unknown key '{prefix}{key}': {hint}known keys are {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    values = {key: _convert(path, prefix + key, value, hints[key]) for key, value in data.items()}
    return cls(**values)


def validate(profile: Profile) -> Profile:
    """Checks across fields; raises ValueError naming the file, the key and the fix."""
    path = profile.path
    if profile.nodes < 1:
        raise ValueError(f"{path}: nodes = {profile.nodes}: must be 1 or more")
    if profile.gpus_per_node is not None and profile.gpus_per_node < 1:
        raise ValueError(f"{path}: gpus_per_node = {profile.gpus_per_node}: must be 1 or more")
    if profile.scheduler == "slurm" and profile.gpus_per_node is None:
        raise ValueError(f"{path}: gpus_per_node is missing: a Slurm profile says how many GPUs a node has")
    if profile.scheduler == "local":
        slurm_only = [
            "partition",
            "cpu_partition",
            "account",
            "qos",
            "time",
            "constraint",
            "gpu_type",
            "mem_per_node",
            "cpus_per_gpu",
        ]
        given = [key for key in slurm_only if getattr(profile, key) is not None] + (
            ["sbatch_extra"] if profile.sbatch_extra else []
        )
        if given or profile.exclusive or profile.nodes != 1 or profile.container.runtime != "none":
            raise ValueError(
                f"{path}: scheduler is local (this machine, one node, no container) but the profile sets "
                f"{', '.join(given) or 'nodes/exclusive/container'}: remove them or set scheduler: slurm"
            )
    if not 1 <= profile.signal_seconds <= 65535:  # sbatch's limit (a 16-bit field)
        raise ValueError(f"{path}: signal_seconds = {profile.signal_seconds}: give 1 to 65535 seconds")
    if profile.max_requeues < 0:
        raise ValueError(f"{path}: max_requeues = {profile.max_requeues}: give 0 (never requeue) or more")
    if profile.time is not None and not SLURM_TIME.fullmatch(profile.time):
        raise ValueError(f"{path}: time = {profile.time!r}: write MM, HH:MM:SS or D-HH:MM:SS (Slurm's formats)")
    if not LOG_DIR.fullmatch(profile.log_dir):
        # sbatch reads --output itself (no shell), so the folder is written as it is: keep it plain.
        raise ValueError(f"{path}: log_dir = {profile.log_dir!r}: use letters, digits and ._/- only")
    runtime, image = profile.container.runtime, profile.container.image
    if runtime != "none" and not image:
        raise ValueError(f"{path}: container.runtime is {runtime} but container.image is not set: name the image")
    if runtime == "none" and (image or profile.container.binds):
        raise ValueError(f"{path}: container.image/binds are set but container.runtime is none: choose a runtime")
    for line in profile.sbatch_extra:
        if not line.startswith("--"):
            raise ValueError(f"{path}: sbatch_extra item {line!r}: write the option only, like --mail-type=END")
    for name in profile.env:
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"{path}: env name {name!r} is not a valid variable name (letters, digits, _)")
        if SECRET_NAME.search(name):
            raise ValueError(
                f"{path}: env.{name} looks like a secret: secrets are never written into job scripts. "
                f"Export {name} in the shell you submit from (sbatch passes it on), or use a token file "
                f"(huggingface_hub reads $HF_HOME/token)"
            )
    for bind in profile.container.binds:
        if not bind or bind.startswith(":") or "," in bind:
            raise ValueError(f"{path}: container.binds item {bind!r}: write host[:container[:options]], one per item")
    return profile


def load_profile(path: str | Path) -> Profile:
    """The validated profile in `path` (jobs/clusters/<name>.yaml)."""
    path = Path(path)
    data = read_yaml(path)
    refuse_tokens(path, data)  # before anything else: a type error would print the value
    profile = _build(path, Profile, data)
    profile.name, profile.path = path.stem, str(path)
    return validate(profile)


def profile_path(name_or_path: str) -> Path:
    """`ci` -> jobs/clusters/ci.yaml (under the working directory, else vtt's own); a path stays a path."""
    from vtt.files import shipped

    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return shipped(name_or_path)
    return shipped(Path("jobs/clusters") / f"{name_or_path}.yaml")
