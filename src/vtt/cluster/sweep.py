"""Sweeps: one Slurm job array over the product of a grid of training arguments (`vtt sweep`, `make sweep`).

    vtt sweep --cluster ci --config jobs/tiny-seq2seq.yaml --gpus 1 --grid learning_rate=1e-3,3e-3 \
        --grid seed=1,2 [--max-parallel 2] [--render-only] [-o FILE.sh] [--name value ...]

Every combination passes the pre-flight check of `vtt submit` (jobs.preflight) before anything is written. The
script (the one job template, with its array block) and its table FILE.<hash>.tsv beside it (named by its
content, so a queued array keeps reading its own after a new render) are written whole; task i
reads row i of the table (a header of argument names, then `i, output_dir, value...` tab-separated: no shell
parses YAML) and trains into its own folder under the sweep's output_dir, `<output_dir>/<name>=<value>,...`.
Each task is preemption-safe as a single job is: warned, it checkpoints and requeues itself alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import re
import shlex
from pathlib import Path

from vtt.cluster.jobs import RENDERED, Array, Job, add_job_arguments, preflight, render, submit, write_script
from vtt.cluster.profiles import load_profile, profile_path
from vtt.files import write_atomically

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Arguments a grid may not vary: the sweep sets output_dir per task, and one array runs one trainer module.
FIXED = ("output_dir", "trainer", "config")


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`["learning_rate=1e-3,3e-3", "seed=1,2"]` -> [(name, values)], in the order given; ValueError naming the fix."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, equals, listed = item.partition("=")
        name = name.removeprefix("--")
        if not equals or not NAME.fullmatch(name):
            raise ValueError(f"--grid {item!r}: write name=value1,value2 (a training argument's name, no --)")
        if name in FIXED:
            raise ValueError(f"--grid {item!r}: {name} is the same for every task of a sweep (give it once)")
        if name in grid:
            raise ValueError(f"--grid {name} is given twice: list all its values in one --grid {name}=v1,v2")
        values = listed.split(",")
        if any(not value.strip() for value in values) or len(set(values)) != len(values):
            raise ValueError(f"--grid {item!r}: an empty or repeated value: list each value once, comma-separated")
        grid[name] = values
    if not grid:
        raise ValueError("a sweep needs at least one --grid name=value1,value2")
    return list(grid.items())


def combinations(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the last name varying fastest."""
    names = [name for name, _ in grid]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in grid))]


def folder_name(combination: dict[str, str]) -> str:
    """`learning_rate=0.001,seed=1`: a task's folder under the sweep's output_dir (a / in a value becomes _)."""
    return ",".join(f"{name}={value.replace('/', '_')}" for name, value in combination.items())


def table_text(output_dirs: list[str], tasks: list[dict[str, str]]) -> str:
    names = list(tasks[0])
    rows = ["\t".join(["task", "output_dir", *names])]
    for i, (out, task) in enumerate(zip(output_dirs, tasks, strict=True)):
        rows.append("\t".join([str(i), out, *task.values()]))
    return "\n".join(rows) + "\n"


def plan(profile, config: str, gpus: int, nodes: int | None, grid, extra: list[str], max_parallel: int | None):
    """The checked sweep: (the array's Job, the table's text, each task's overrides). Writes nothing.

    Every combination is checked (jobs.preflight) and every problem is listed, one line a combination.
    """
    from vtt.config import run_command

    if profile.scheduler != "slurm":
        raise ValueError(f"{profile.path}: scheduler is {profile.scheduler}: a sweep is a Slurm job array")
    if max_parallel is not None and max_parallel < 1:
        raise ValueError(f"--max-parallel {max_parallel}: give 1 or more tasks at once")
    command = run_command(config, extra)
    twice = [name for name, _ in grid if command.given(name) is not None]
    if twice:
        raise ValueError(f"--{twice[0]} is given as an argument and in --grid: give it in one place")
    output_dir = command.value("output_dir")
    if not output_dir:
        raise ValueError(f"{config} names no output_dir: give the sweep's folder with --output_dir DIR")
    tasks = combinations(grid)
    folders = [folder_name(task) for task in tasks]
    if len(set(folders)) != len(folders):
        raise ValueError(f"two combinations get the same folder name ({folders}): values differ only by a /")
    output_dirs = [str(Path(output_dir) / folder) for folder in folders]
    problems, words, jobs = [], [], []
    for task, out in zip(tasks, output_dirs, strict=True):
        task_words = [word for name, value in task.items() for word in (f"--{name}", value)]
        task_words += ["--output_dir", out]
        try:
            jobs.append(preflight(profile, config, gpus, nodes, [*extra, *task_words]))
        except ValueError as err:
            problems.append(f"  {folder_name(task)}: {err}")
        words.append(task_words)
    if problems:
        listing = "\n".join(problems)
        raise ValueError(f"{len(problems)} of {len(tasks)} combinations fail; nothing was written:\n{listing}")
    # The array's script holds the arguments every task shares; each task adds its row of the table.
    base = dataclasses.replace(jobs[0], overrides=[str(word) for word in extra])
    return base, table_text(output_dirs, tasks), words


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2", help="a training argument and its values"
    )
    parser.add_argument("--max-parallel", type=int, help="at most this many tasks at once (sbatch --array=...%%K)")
    parser.add_argument("--render-only", action="store_true", help="write the script and its table, submit nothing")
    parser.add_argument("-o", "--out", type=Path, help="the script FILE.sh (its table: FILE.<hash>.tsv beside it)")


def _command(args: argparse.Namespace, extra: list[str], script: Path) -> list[str]:
    words = ["vtt", "sweep", "--cluster", args.cluster, "--config", args.config, "--gpus", str(args.gpus)]
    words += ["--nodes", str(args.nodes)] * (args.nodes is not None)
    words += [word for item in args.grid for word in ("--grid", item)]
    words += ["--max-parallel", str(args.max_parallel)] * (args.max_parallel is not None)
    return [*words, "--render-only", "-o", str(script), *extra]


def run(args: argparse.Namespace, extra: list[str]) -> int:
    profile = load_profile(profile_path(args.cluster))
    grid = parse_grid(args.grid)
    job, table, words = plan(profile, args.config, args.gpus, args.nodes, grid, extra, args.max_parallel)
    script = _script_path(job, args.out)
    # Named by its content: an array still queued reads its own table after the sweep is rendered again.
    tsv = script.with_name(f"{script.stem}.{hashlib.sha256(table.encode()).hexdigest()[:8]}.tsv")
    job.array = Array(len(words), str(tsv), args.max_parallel, _command(args, extra, script))
    text = render(job)
    write_atomically(tsv, table)  # first: a script never names a table that is not there
    write_script(text, script)
    if args.render_only:
        print(script)
        print(tsv)
        return 0
    job_id, _ = submit(job, script)
    size = f"{job.nodes} node(s) x {job.gpus} GPU(s) each"
    print(f"submitted job array {job_id} ({job.name}, {len(words)} tasks, {size}) from {script}")
    for i, task_words in enumerate(words):
        print(f"task {i}: {shlex.join(task_words)}; log {job.log(job_id, i)}")
    print(f"follow: squeue -j {job_id}; when they are done: vtt report {Path(words[0][-1]).parent}")
    return 0


def _script_path(job: Job, out: Path | None) -> Path:
    if out is None or str(out).endswith("/") or out.is_dir():
        return (out or RENDERED) / job.script_name
    return out
