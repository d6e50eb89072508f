"""Fetch what a run config names from the Hub into a shared cache, for compute nodes without internet.

    vtt stage --config jobs/llava.yaml [--cache /shared/hf]        # make stage CONFIG=jobs/llava.yaml

Run it on a login node (it needs the Hub): the model's weights, config, processor and tokenizer files,
and any Hub dataset the config names, go into `<cache>/hub` in huggingface_hub's own layout, so jobs
find them with HF_HOME=<cache> and HF_HUB_OFFLINE=1. `<cache>/vtt-staged.json` records what is there.
Formats the trainers never load (TensorFlow, Flax, ONNX, pickles beside safetensors) are left out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vtt.check.offline import hub_cache, hub_repos, ignore_patterns, named_values, not_in_cache
from vtt.config import run_command
from vtt.files import shipped, write_atomically

MANIFEST = "vtt-staged.json"


def stage_repo(repo, cache_dir: Path) -> dict:
    """Download `repo` into `cache_dir`; return its manifest entry (commit, files, bytes)."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().repo_info(repo.repo_id, repo_type=repo.repo_type, revision=repo.revision)
    skip = ignore_patterns([sibling.rfilename for sibling in info.siblings or []])
    folder = Path(
        snapshot_download(
            repo.repo_id, repo_type=repo.repo_type, revision=repo.revision, cache_dir=cache_dir, ignore_patterns=skip
        )
    )
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    return {
        "repo_id": repo.repo_id,
        "repo_type": repo.repo_type,
        "revision": repo.revision,
        "commit": folder.name,
        "files": files,
        "bytes": sum((folder / name).stat().st_size for name in files),
        "staged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_manifest(path: Path, entries: dict[str, dict]) -> None:
    """Merge `entries` into the manifest at `path`, written whole or not at all (rename into place)."""
    manifest = json.loads(path.read_text()) if path.exists() else {"repos": {}}
    manifest["repos"].update(entries)
    write_atomically(path, json.dumps(manifest, indent=2, sort_keys=True))


def stage(config: str | Path, overrides: list[str], cache_home: Path | None = None) -> tuple[Path, dict[str, dict]]:
    """Stage every Hub repo `config` names; return (manifest path, its new entries)."""
    from huggingface_hub import constants

    home = Path(cache_home) if cache_home is not None else Path(constants.HF_HOME)
    cache_dir = hub_cache(cache_home)
    repos, absent = hub_repos(named_values(run_command(config, overrides)))
    for line in absent:
        print(f"vtt stage: not on the Hub, not staged: {line}")
    entries = {}
    for repo in repos:
        print(f"vtt stage: {repo} -> {cache_dir}", flush=True)
        entries[f"{repo.repo_type}:{repo.repo_id}@{repo.revision}"] = stage_repo(repo, cache_dir)
        # Prove the job's own offline check will pass before saying it is staged.
        why = not_in_cache(repo, cache_dir)
        if why:
            raise ValueError(f"{repo.repo_id}: downloaded into {cache_dir} but still not loadable offline: {why}")
    manifest = home / MANIFEST
    write_manifest(manifest, entries)
    return manifest, entries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config, e.g. jobs/llava.yaml")
    parser.add_argument(
        "--cache",
        type=Path,
        help="the cluster's shared HF_HOME (files go to CACHE/hub); default: this environment's HF_HOME",
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    config = shipped(args.config)
    manifest, entries = stage(config, extra, args.cache)
    for entry in entries.values():
        print(
            f"  {entry['repo_type']:8} {entry['repo_id']}  commit {entry['commit'][:12]}  "
            f"{len(entry['files'])} files, {entry['bytes'] / 1e6:.1f} MB"
        )
    print(f"vtt stage: {len(entries)} repo(s) staged; manifest {manifest}")
    print(f"  jobs read them with HF_HOME={manifest.parent} HF_HUB_OFFLINE=1")
    return 0
