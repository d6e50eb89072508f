"""The docs cannot go stale: README.md and docs/*.md are checked against the tree, and their commands are run.

- every relative link (and `#anchor`) resolves inside the repository, and every docs page is linked from
  README.md, which stays at most 150 lines;
- every `make X` named is a target `make help` lists, and every `vtt X` a command of vtt.cli.COMMANDS;
- the README's exit-code table is vtt.exits.Exit, row for row;
- every fenced block whose info string is `bash cpu` runs as written (`bash -euo pipefail`) in a fresh copy
  of the repository, the venv's bin first on PATH, within a minute. Blocks that need a GPU, Slurm, the Hub
  or minutes of training are plain `bash` blocks and are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vtt.cli import COMMANDS
from vtt.exits import Exit

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
VENV = ROOT / ".venv"
MAX_README_LINES = 150
BLOCK_SECONDS = 60
# What a fresh checkout does not hold, when the tree is not a git checkout to ask.
NOT_IN_A_CHECKOUT = (".git", ".venv", "outputs", "logs", "jobs/rendered", "__pycache__", ".pytest_cache", ".ruff_cache")

FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
# `vtt check`, `.venv/bin/vtt run`; not `vtt.cli`, `vtt-run.json`, nor a log line's prefix (`vtt resume: ...`).
VTT_COMMAND = re.compile(r"(?<![\w.-])vtt ([a-z][\w-]*)(?![\w:-])")
MAKE_TARGET = re.compile(r"(?<![\w.-])make ([a-z][\w-]*)(?![\w=:-])")
COMMENT = re.compile(r"(^|\s)#.*$", re.M)  # a shell comment: prose, not a command


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    info: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runs_on_cpu(self) -> bool:
        return self.info.split() in (["bash", "cpu"], ["sh", "cpu"])

    @property
    def is_shell(self) -> bool:
        return bool(self.info.split()) and self.info.split()[0] in ("bash", "sh", "console", "shell")


def blocks_and_prose(page: Path) -> tuple[list[Block], str]:
    """The fenced code blocks of a page, and its text outside them."""
    blocks, prose, body, opened = [], [], [], None
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if opened is None:
            if fence:
                opened = (fence.group(1), fence.group(2).strip(), number)
                body = []
            else:
                prose.append(line)
        elif fence and fence.group(1).startswith(opened[0]) and not fence.group(2).strip():
            blocks.append(Block(page, opened[2], opened[1], "\n".join(body) + "\n"))
            opened = None
        else:
            body.append(line)
    assert opened is None, f"{page.relative_to(ROOT)}:{opened[2]}: a code block is never closed"
    return blocks, "\n".join(prose)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    _, prose = blocks_and_prose(page)
    seen: dict[str, int] = {}
    found = set()
    for line in prose.splitlines():
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    _, prose = blocks_and_prose(page)
    return LINK.findall(INLINE_CODE.sub("", prose))


def code_text(page: Path) -> str:
    """What a page shows as commands: its shell blocks without their comments, and its inline code spans."""
    blocks, prose = blocks_and_prose(page)
    spans = [match.group(2) for match in INLINE_CODE.finditer(prose)]
    commands = [COMMENT.sub("", block.text) for block in blocks if block.is_shell]
    return "\n".join([*commands, *spans])


def runnable_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks_and_prose(page)[0] if block.runs_on_cpu]


def test_readme_is_short_and_links_every_docs_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move detail into docs/"
    )
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README)}
    unlinked = [page.name for page in DOCS if page.resolve() not in linked]
    assert DOCS, "docs/ has no page"
    assert not unlinked, f"docs pages README.md does not link: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves_inside_the_repository(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page.resolve()
        if not file.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_outside_the_repository_for_a_file(page):
    assert "../shared" not in page.read_text(), f"{page.relative_to(ROOT)} names a file outside the repository"


def make_targets() -> set[str]:
    shown = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True)
    return set(re.findall(r"^\s+make (\S+)", shown.stdout, re.M))


def test_every_make_target_and_vtt_command_named_exists():
    targets = make_targets()
    assert {"demo", "test", "test-fast", "help"} <= targets
    missing = []
    for page in PAGES:
        code = code_text(page)
        missing += [f"{page.relative_to(ROOT)}: make {t}" for t in MAKE_TARGET.findall(code) if t not in targets]
        missing += [f"{page.relative_to(ROOT)}: vtt {c}" for c in VTT_COMMAND.findall(code) if c not in COMMANDS]
    assert not missing, f"named in the docs but not in the Makefile or vtt.cli.COMMANDS: {sorted(set(missing))}"


def test_readme_exit_code_table_is_vtt_exits():
    text = README.read_text()
    section = text.split("\n## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if re.match(r"^\|\s*\d+\s*\|", line)
    ]
    table = [(int(code), name, requeued, meaning) for code, name, requeued, meaning in rows]
    wanted = [(int(e), e.name, "yes" if e.requeue else "no", e.meaning) for e in Exit]
    assert table == wanted, "README.md's exit-code table differs from vtt.exits.Exit: copy the enum's rows"


def test_pages_mark_commands_that_run_on_a_cpu():
    pages = {block.page for block in runnable_blocks()}
    assert README in pages, "README.md shows no `bash cpu` block"
    assert len(pages) >= len(PAGES) // 2, f"only {len(pages)} pages have a `bash cpu` block"


def checkout_files() -> list[Path]:
    """The files a fresh checkout of this tree holds: tracked and new ones git does not ignore."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = [ROOT / name for name in NOT_IN_A_CHECKOUT]
        return [
            path
            for path in ROOT.rglob("*")
            if path.is_file() and not any(path.is_relative_to(s) or s.name in path.parts for s in skip)
        ]


def fresh_copy(where: Path) -> Path:
    """A copy of the repository at `where`, with a .venv that is this one's (installed: make runs no pip)."""
    for path in checkout_files():
        target = where / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)  # mtimes kept: make compares them
    venv = where / ".venv"
    venv.mkdir()
    for entry in VENV.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # newer than the copied pyproject.toml: `make setup` has nothing to do
    return where


@pytest.mark.skipif(not (VENV / "bin" / "vtt").exists(), reason="no .venv: run make setup")
@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.name)
def test_command_shown_for_a_cpu_runs_as_written(block, tmp_path):
    repo = fresh_copy(tmp_path / "repo")
    env = dict(
        os.environ,
        PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        VTT_HOME=str(repo),  # vtt's shipped files come from the copy too
        HF_HUB_OFFLINE="1",  # no block may need the network: fail at once rather than hang
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "vtt" / "torch_extensions"))
    started = time.monotonic()
    # A session of its own, so that a block over its time is stopped with everything it started.
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = shell.communicate(timeout=BLOCK_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        output, _ = shell.communicate()
        pytest.fail(f"{block.name} ran over {BLOCK_SECONDS} s:\n{block.text}\n--- output:\n{output[-3000:]}")
    seconds = time.monotonic() - started
    assert shell.returncode == 0, (
        f"{block.name} exited {shell.returncode}:\n{block.text}\n--- output:\n{output[-4000:]}"
    )
    assert seconds < BLOCK_SECONDS
