"""Folders a command writes: never over its inputs, never over a folder it did not write, one writer at a time.

    with claim_output(out, "prepare", inputs=[manifest, *videos]) as claim:
        staging = claim.staging()     # a fresh folder beside `out`, this process's own
        ...                           # write everything into it
        claim.publish(staging)        # marked as prepare's output, then renamed into place

A command that writes its folder in place (checkpoints, resume) calls `claim.mark()` instead, which
creates the folder with its marker. Every refusal is a ValueError naming the folder, why, and the fix.

- a target that is one of `inputs` or holds one (a folder containing the manifest or the videos) is refused:
  replacing it would delete them;
- a target that exists and is not empty must hold MARKER written by the same command (an earlier output, which
  is replaced), else it is refused: it may be anything;
- a lock (flock on `.<name>.lock` beside the target) is held from the checks to the end of the command, so a
  second writer is refused at once with the first one's pid, instead of both writing one folder.

Writes that fail for lack of space raise NoSpace (`space_checked`), with the folder and the free space.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from vtt.files import replace_folder, size, write_atomically

MARKER = ".vtt-output.json"
# Folders vtt wrote before it had MARKER, known by a file only that command writes: an earlier `vtt run`'s
# output_dir holds vtt-run.json. They count as that command's outputs (and get the marker when claimed).
EARLIER_OWNERS = {"run": "vtt-run.json"}
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpace(Exception):
    """A write failed for lack of disk space (or quota); the message names the folder, the space free and needed."""

    def __init__(self, folder: Path, free: int, needed: int | None = None):
        need = f", about {size(needed)} needed" if needed else ""
        super().__init__(
            f"{folder}: no space left on the device ({size(free)} free when the write began{need}): "
            "free some space, or write to another disk"
        )
        self.folder, self.free, self.needed = folder, free, needed


def is_out_of_space(err: BaseException | None) -> bool:
    """True for ENOSPC / EDQUOT, also when a library wrapped it (datasets raises DatasetGenerationError from it)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and (
            err.errno in OUT_OF_SPACE or "No space left on device" in str(err) or "Disk quota exceeded" in str(err)
        ):  # pyarrow's OSError carries the strerror text, not always the errno
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(folder: Path) -> int:
    """Free space of the file system `folder` is on (or would be: its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


@contextmanager
def space_checked(folder: Path, needed: int | None = None, partial: Path | None = None) -> Iterator[None]:
    """Turn a write that runs out of space under `folder` into NoSpace; other errors pass unchanged.

    The free space reported is measured before the write: after it, files of the failed write that a library
    still maps (datasets' Arrow files) hold space until the process ends. `partial`: a folder of the failed
    write, removed before NoSpace is raised.
    """
    free = free_bytes(folder)
    try:
        yield
    except Exception as err:
        if is_out_of_space(err):
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            raise NoSpace(folder, free, needed) from err
        raise


class Claim:
    """The right to write `target`, held until claim_output's block ends."""

    def __init__(self, target: Path, command: str):
        self.target, self.command = target, command
        self._staged: list[Path] = []

    def staging(self) -> Path:
        """A new empty folder beside the target (same file system, so publish is a rename); removed at the end
        unless published."""
        staging = self.target.with_name(f".{self.target.name}.partial-{os.getpid()}-{len(self._staged)}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        self._staged.append(staging)
        return staging

    def publish(self, staged: Path) -> Path:
        """Mark `staged` as this command's output and rename it to the target, replacing an earlier output."""
        # A plain write: the staging folder is this process's own and nobody reads it before the rename.
        (staged / MARKER).write_text(json.dumps(self._record(), indent=2) + "\n")
        return replace_folder(staged, self.target)

    def mark(self) -> Path:
        """For a command writing the target in place: create it and its marker (kept if there)."""
        self.target.mkdir(exist_ok=True)
        if not (self.target / MARKER).is_file():
            write_atomically(self.target / MARKER, json.dumps(self._record(), indent=2) + "\n")
        return self.target

    def _record(self) -> dict:
        return {
            "command": self.command,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    def _clean(self) -> None:
        for staging in self._staged:
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def claim_output(target: str | Path, command: str, inputs: Iterable[str | Path] = (), option: str = "--out"):
    """Check and lock `target` for `vtt <command>`; yields a Claim. `inputs`: files and folders the command reads
    or keeps (manifest, videos, caches), which the target must not be or hold. `option` names the target in
    messages."""
    target = Path(target).resolve()
    where = f"{option} {target}"
    if target == Path(target.anchor):
        raise ValueError(f"{where}: a file system root cannot be an output folder: give {option} a folder below it")
    for path in inputs:
        path = Path(path).resolve()
        if path == target:
            raise ValueError(f"{where}: is {path}, which `vtt {command}` reads: give {option} a new folder")
        if target in path.parents:
            raise ValueError(
                f"{where}: holds {path}, which `vtt {command}` reads, and writing the folder replaces all it holds: "
                f"give {option} a new folder (e.g. {target / command}) or one beside it"
            )
    if target.exists() and not target.is_dir():
        raise ValueError(f"{where}: is a file, not a folder: give {option} a folder, or remove the file")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.lock")
    fd = _lock(lock, where, command)
    claim = Claim(target, command)
    try:
        _check_owner(target, command, where, option)
        # Left by an interrupted writer (the lock says none is running): staging folders, a swapped-out output.
        for pattern in (".{}.partial-*", ".{}.previous-*", ".{}.partial", ".{}.previous"):
            for leftover in target.parent.glob(pattern.format(glob.escape(target.name))):
                shutil.rmtree(leftover, ignore_errors=True)
        yield claim
    finally:
        claim._clean()
        # Unlink while still holding the lock; a writer that opened the old file finds it gone and retries (_lock).
        lock.unlink(missing_ok=True)
        os.close(fd)


def check_output_file(
    target: str | Path, command: str, inputs: Iterable[str | Path] = (), option: str = "--out"
) -> Path:
    """A file `vtt <command>` writes whole (atomically) must not be one of its inputs nor a folder; returns it."""
    target = Path(target).resolve()
    for path in inputs:
        if Path(path).resolve() == target:
            raise ValueError(
                f"{option} {target}: is the file `vtt {command}` reads, and writing it would replace it: "
                f"give {option} another file"
            )
    if target.is_dir():
        raise ValueError(f"{option} {target}: is a folder: give {option} a file name, e.g. {target / 'out.jsonl'}")
    return target


_held = ExitStack()  # claims held until the process ends (a training run's output_dir), released at exit
atexit.register(_held.close)


def hold_output(target: str | Path, command: str, inputs: Iterable[str | Path] = (), option: str = "--out") -> Claim:
    """claim_output for the rest of this process: for a command that writes its folder in place as it goes."""
    claim = _held.enter_context(claim_output(target, command, inputs, option))
    claim.mark()
    return claim


def _lock(path: Path, where: str, command: str) -> int:
    """Take the lock file at `path` (non-blocking); ValueError naming the holder when another process has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            try:
                held = json.loads(holder)
                who = f"`vtt {held['command']}` (pid {held['pid']} on {held['host']}, since {held['since']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise ValueError(
                f"{where}: {who} is writing it now (lock {path}): wait for it to end, or give another folder"
            ) from None
        try:  # the previous holder may have removed the file between our open and our lock
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    holder = {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    return fd


def _check_owner(target: Path, command: str, where: str, option: str) -> None:
    """Refuse a non-empty folder that is not an earlier output of `command`."""
    # `vtt run --log FILE` (and `vtt demo`) may tee the launcher's output into the folder before the claim.
    if not target.is_dir() or all(p.suffix == ".log" for p in target.iterdir()):
        return
    fix = f"give {option} a new folder, or remove {target} if nothing in it is needed"
    marker = target / MARKER
    if not marker.is_file() and command in EARLIER_OWNERS and (target / EARLIER_OWNERS[command]).is_file():
        return
    if not marker.is_file():
        raise ValueError(f"{where}: holds files that vtt did not write (no {MARKER}) and would be replaced: {fix}")
    try:
        owner = json.loads(marker.read_text())["command"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{where}: {marker} is not a vtt output marker: {fix}") from None
    if owner != command:
        raise ValueError(f"{where}: is the output of `vtt {owner}`, not of `vtt {command}`: {fix}")
