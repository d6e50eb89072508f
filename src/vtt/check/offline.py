"""Is everything a run config names in the local Hugging Face cache? Checked at job start on offline nodes.

    HF_HUB_OFFLINE=1 vtt run --config jobs/llava.yaml      # stops in seconds, listing what is missing
    python -m vtt.check.offline --config jobs/llava.yaml          # the same check on its own (exit 1 when missing)

Compute nodes without internet run with HF_HUB_OFFLINE=1 on a cache staged from a login node
(`vtt stage`, `make stage`). Without this check a missing file surfaces as a transformers error after
the queue wait and the start-up, or, where the offline variables are not set, as a network call that
hangs until it times out. Everything here reads the cache only: no call can reach the network.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from vtt.config import RunCommand, run_command

# The run-config fields that name something on the Hub, and what kind of repo it is.
HUB_FIELDS = {"model_name_or_path": "model", "dataset": "dataset", "eval_dataset": "dataset"}
# namespace/name as the Hub spells repo ids; a local path has more parts or a file suffix.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow", ".txt", ".tsv")
# Formats the trainers never load (TensorFlow, Flax, ONNX, ...): neither staged nor required.
UNUSED_FORMATS = [
    "*.onnx",
    "onnx/*",
    "*.msgpack",
    "flax_model*",
    "*.h5",
    "tf_model*",
    "*.tflite",
    "*.ot",
    "coreml/*",
    "openvino/*",
    "*.gguf",
]
# PyTorch pickles that repeat the safetensors weights in the same repo.
PICKLED_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt"]
TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubRepo:
    """A repo a run config names: which field names it, and as what kind of repo."""

    field: str
    repo_id: str
    repo_type: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"{self.field}: {self.repo_type} {self.repo_id} (revision {self.revision})"


def is_offline(env: dict[str, str] | None = None) -> bool:
    """True when the job runs with the Hub switched off (HF_HUB_OFFLINE or its transformers/datasets twins)."""
    env = os.environ if env is None else env
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(env.get(name, "").upper() in TRUE for name in names)


def ignore_patterns(files: list[str]) -> list[str]:
    """What is not staged of a repo holding `files`: unused formats, and pickles where safetensors exist."""
    if any(name.endswith(".safetensors") for name in files):
        return UNUSED_FORMATS + PICKLED_WEIGHTS
    return list(UNUSED_FORMATS)


def named_values(command: RunCommand) -> dict[str, str]:
    """The Hub-capable fields of a run config, after its command-line overrides, as the trainer will see them."""
    values = {name: command.value(name) for name in HUB_FIELDS}
    return {name: str(value) for name, value in values.items() if value not in (None, "")}


def hub_repos(values: dict[str, str]) -> tuple[list[HubRepo], list[str]]:
    """(Hub repos, local paths that do not exist) among `values`; a path that exists is never a Hub id."""
    repos, absent = [], []
    for name, value in values.items():
        if Path(value).exists():
            continue
        if HUB_ID.match(value) and not value.lower().endswith(DATA_FILE_SUFFIXES):
            repos.append(HubRepo(name, value, HUB_FIELDS[name]))
        else:
            absent.append(f"{name}: {value} (a local path, not found from {Path.cwd()})")
    return repos, absent


def hub_cache(cache_home: str | Path | None = None) -> Path:
    """The hub cache folder: `<cache_home>/hub` when given, else huggingface_hub's (HF_HUB_CACHE, HF_HOME)."""
    if cache_home is not None:
        return Path(cache_home) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def not_in_cache(repo: HubRepo, cache_dir: Path) -> str | None:
    """Why `repo` cannot be loaded from `cache_dir` without the network, or None when it can."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        files = [
            f.path
            for f in get_cached_repo_tree(
                repo.repo_id, repo_type=repo.repo_type, revision=repo.revision, cache_dir=cache_dir
            )
        ]
    except CachedRepoTreeNotFoundError:
        files = []  # staged by another tool: the snapshot folder is all there is to check
    try:
        # local_files_only never opens a connection; with the tree listing cached, huggingface_hub also
        # checks that every file of the snapshot is present (IncompleteSnapshotError otherwise).
        snapshot_download(
            repo.repo_id,
            repo_type=repo.repo_type,
            revision=repo.revision,
            cache_dir=cache_dir,
            local_files_only=True,
            ignore_patterns=ignore_patterns(files),
        )
    except IncompleteSnapshotError as err:  # its message names the files the snapshot lacks
        return f"staged only in part: {err}"
    except LocalEntryNotFoundError:
        return "not in the cache"
    return None


def missing(values: dict[str, str], cache_dir: Path) -> list[str]:
    """One line for each named model or dataset that cannot be loaded offline from `cache_dir`."""
    # A local path that does not exist is not a cache problem: the loader names it (and staging cannot help).
    repos, _ = hub_repos(values)
    return [f"{repo}: {why}" for repo in repos if (why := not_in_cache(repo, cache_dir))]


def stage_command(config: str | Path | None) -> str:
    return f"make stage CONFIG={config}  (or: vtt stage --config {config} --cache <HF_HOME of the cluster>)"


def require_staged(command: RunCommand, cache_dir: Path | None = None) -> None:
    """Raise a ValueError listing what the run needs and the cache lacks, with the command that stages it."""
    cache_dir = hub_cache() if cache_dir is None else cache_dir
    problems = missing(named_values(command), cache_dir)
    config = command.where
    if problems:
        listing = "\n".join(f"  - {line}" for line in problems)
        raise ValueError(
            f"{config}: offline (HF_HUB_OFFLINE=1) and {len(problems)} thing(s) the run needs are not in the "
            f"Hugging Face cache {cache_dir}:\n{listing}\n"
            f"Stage them from a machine with internet (a login node), into this same cache:\n"
            f"  {stage_command(config)}"
        )


def require_staged_if_offline(command: RunCommand) -> None:
    """`require_staged` when the Hub is switched off; nothing otherwise (an online job downloads what it lacks)."""
    if is_offline():
        require_staged(command)


def check_at_start(command: RunCommand) -> None:
    """A trainer's first step: on an offline node, exit with the list of what is missing before any loading."""
    if not is_offline() or command.config is None:
        return
    try:
        require_staged(command)
    except ValueError as err:
        raise SystemExit(f"vtt: {err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtt.check.offline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config, e.g. jobs/llava.yaml")
    parser.add_argument("--cache", type=Path, help="HF_HOME to check (default: this environment's)")
    args, overrides = parser.parse_known_args(argv)
    try:
        require_staged(run_command(args.config, overrides), hub_cache(args.cache))
    except ValueError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{args.config}: everything it names is in {hub_cache(args.cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
