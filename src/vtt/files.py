"""Files every stage shares: where vtt's shipped files are, atomic writes, the names of a run's records,
and what makes a checkpoint complete.

    python -c "from vtt.files import shipped; print(shipped('jobs/llava.yaml'))"

A reader never sees half a file or half a folder: `write_atomically` writes beside the target and renames,
`replace_folder` renames a finished folder over an earlier one and puts the earlier one back on failure.
A checkpoint is complete when its marker (CHECKPOINT_MARKER) is in it: the trainer writes it after every
rank's save, so `complete_checkpoints` is what resume, the disk guard and `vtt check` all count.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

# src/vtt/files.py -> the repository (or image) root that holds jobs/ and deepspeed/
INSTALL_ROOT = Path(os.environ.get("VTT_HOME", Path(__file__).resolve().parents[2]))
# What a run writes into its output_dir for `vtt report`, `vtt predict` and a later `vtt run`.
RUN_RECORD = "vtt-run.json"
DEEPSPEED_RECORD = "deepspeed.json"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_MARKER = "vtt-checkpoint.json"


def shipped(relative: str | Path) -> Path:
    """`relative` under the working directory when it is there, else under vtt's own root."""
    here = Path(relative)
    if here.exists() or here.is_absolute():
        return here
    return INSTALL_ROOT / relative


def write_atomically(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write `text` to a temporary file beside `path` (chmod `mode`), then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(text)
    if mode is not None:
        partial.chmod(mode)
    os.replace(partial, path)
    return path


def replace_folder(staged: Path, target: Path) -> Path:
    """Rename the finished folder `staged` to `target`, replacing an earlier `target`, which comes back on failure."""
    previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
    if target.exists():
        target.rename(previous)
    try:
        staged.rename(target)
    except BaseException:
        if previous.exists():
            previous.rename(target)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return target


def size(n: float) -> str:
    """Bytes as a person reads them: 3.9 MB, 15.2 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def step_of(folder: Path) -> int | None:
    """N of a `checkpoint-N` folder; None for any other name."""
    suffix = folder.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if folder.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def checkpoint_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker of a checkpoint folder, or None when it has none (an incomplete save)."""
    try:
        return json.loads((Path(folder) / CHECKPOINT_MARKER).read_text())
    except (OSError, ValueError):
        return None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Every `checkpoint-N` folder in output_dir, oldest step first, complete or not."""
    found = [p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoints of output_dir that have their completion marker, oldest first."""
    return [p for p in checkpoints(output_dir) if checkpoint_marker(p) is not None]
