"""Pre-flight check of a DeepSpeed file against the training arguments and the GPUs a job gets (`vtt check`).

    vtt check --deepspeed deepspeed/zero2.json --gpus 4 [--nodes 2] [--config jobs/llava.yaml] [--json]
              [--fix OUT] [--gpu-memory 80] [--per_device_train_batch_size 2 ...]
    vtt check --config jobs/qwen2_5_vl-7b.yaml --data data/manifest.jsonl [--gpus 8 ...] [--max_pixels 200704]

The verdict comes from the code the runtime runs, in the order it runs it, with the world size given
instead of read from torch.distributed (a login node has none):

1. TrainingArguments: transformers' `HfTrainerDeepSpeedConfig.trainer_config_process` fills every
   `"auto"` and compares every hard-coded value the Trainer owns; accelerate's `DeepSpeedPlugin` takes
   the file as TrainingArguments hands it over; on GPUs the Trainer's AcceleratorState adds the bf16/fp16
   block the arguments ask for where the file has none.
2. `Trainer.train()` -> `trainer_config_finalize`: raises the mismatches of step 1 (the ValueError that
   ends a job after its queue wait and model load).
3. accelerate's `_prepare_deepspeed`: an `"auto"` that nothing fills is an error.
4. `deepspeed.initialize` -> DeepSpeed's `DeepSpeedConfig`: batch arithmetic (its own derivation where
   the file gives only some of the three batch keys), every key its blocks refuse, bf16 and fp16 not
   both on; then what the engine refuses as it builds (vtt.check.rules: optimizer and scheduler types,
   warmup_num_steps, tensor_parallel.autotp_size).

Around that: `global_batch_size` of the run config must divide for the world size, and an estimate
of model-state memory per GPU (DeepSpeed's own accounting in its estimate_zero2/zero3 functions, with
frozen parameters and ZeRO's gradient buckets counted) is set against the GPU's memory when one is
given. With use_peft the model is counted wrapped with the run's adapter (vtt.models.size), the report
says what trains (`trainable 40.0M of 8.2B parameters (0.49%), LoRA r=16 on 224 modules`) and the memory
estimate is LoRA's or QLoRA's (vtt.check.memory). `--fix OUT` writes a copy of the file with every value
the Trainer owns set to "auto".

`--data MANIFEST` (with --config; --gpus optional then) predicts each sample's visual tokens from its
container, sampled and resized as the run's model and video settings say (vtt.data.budget): it prints
their distribution and names each sample over max_visual_tokens (or whose visual tokens alone reach
max_length) with the frames that fit; it exits 2 when those and the unreadable samples are more than
max_reject_ratio of the manifest (the run would stop, or train on fewer samples than asked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vtt.check.memory import (
    MemoryEstimate,
    bucket_warnings,
    estimate_memory,
    estimate_plain_memory,
    load_dtype,
    memory_problems,
    model_parameters,
    quantised_zero3_warnings,
    sixteen_bit_warnings,
)
from vtt.check.rules import BATCH_KEYS, Problem, get
from vtt.check.runtime import TRAINER_OWNED, quiet, runtime_problems, training_arguments
from vtt.config import RunCommand, run_command
from vtt.files import shipped
from vtt.models.size import AdapterError, ParameterCount, trainable_line


@dataclass
class CheckReport:
    deepspeed: str
    world: int
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    # what trains: total, trainable, percent, line, and the adapter's method, r, modules, ... (None: no model counted)
    parameters: dict[str, Any] | None = None
    config: dict[str, Any] | None = None  # the DeepSpeed config as the runtime would fill it

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        out = [p.line("error", self.deepspeed) for p in self.errors]
        out += [p.line("warning", self.deepspeed) for p in self.warnings]
        if self.parameters is not None:
            out.append(self.parameters["line"])
        if self.memory is not None:
            out.append(self.memory.line())
        verdict = "consistent" if self.ok else f"{len(self.errors)} problem(s)"
        out.append(f"{self.deepspeed or 'no DeepSpeed'} on {self.world} GPU(s): {verdict}")
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        if self.memory is not None:
            data["memory"]["total_gb"] = self.memory.total_gb
        data.pop("config")
        return json.loads(json.dumps(data, default=str))


def read_deepspeed(path: str | Path) -> dict[str, Any]:
    """The DeepSpeed file as a dict (JSON, as accelerate reads it), or a ValueError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such DeepSpeed file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object of DeepSpeed settings, found {type(data).__name__}")
    return data


def check_run(
    config: str | Path | None,
    gpus: int,
    nodes: int = 1,
    overrides: Sequence[str] = (),
    deepspeed: str | Path | None = None,
    gpu_memory_gb: float | None = None,
    disk: bool = False,
) -> CheckReport:
    """Check a DeepSpeed file against a run config (or TrainingArguments defaults) on nodes x gpus GPUs.

    Raises ValueError when the check cannot run (missing or invalid file, bad argument); problems
    found are in the report. With `disk`, the run's checkpoints are also measured against the free space
    of its output folder — meaningful only where the job will write (a login node on the shared file
    system); every trainer start checks it again where it runs.
    """
    if gpus < 1 or nodes < 1:
        raise ValueError(f"--gpus {gpus} --nodes {nodes}: both must be at least 1")
    with quiet():
        return _check(config, gpus * nodes, overrides, deepspeed, gpu_memory_gb, disk)


def _check(config, world: int, overrides: list[str], deepspeed, gpu_memory_gb, disk: bool) -> CheckReport:
    command = run_command(config, overrides)
    from_argv, command = command.given("deepspeed"), command.without("deepspeed")
    run, task, args, named, problems = training_arguments(command, world)
    # --deepspeed '' on the command line (or deepspeed: null in the file) is a run without DeepSpeed
    chosen = next((name for name in (deepspeed, from_argv) if name is not None), named)
    if not chosen and run is None:
        raise ValueError("pass --deepspeed FILE, or --config of a run (with or without DeepSpeed)")
    report = CheckReport(deepspeed=str(chosen or ""), world=world)
    report.errors += problems + _dataloader_problems(args, config) + _token_batch_problems(run, task, config)
    counts, model_config, why = _counted(report, run, task, config)
    if chosen:
        written = read_deepspeed(shipped(chosen))
        errors, warnings, filled = runtime_problems(
            written, args, world, model_config, steps_known=args.max_steps > 0, on_gpu=_on_gpu(command)
        )
        if problems:  # no accumulation exists for this layout: batch findings would only repeat that
            errors = [p for p in errors if p.key not in BATCH_KEYS]
        report.errors += errors
        report.warnings += warnings
        report.config = filled
    if run is None:
        report.memory = MemoryEstimate(model="", skipped="no run config (--config): no model to size")
    elif counts is None:
        report.memory = MemoryEstimate(model=run.model_name_or_path, skipped=why, zero=bool(chosen))
    elif chosen:
        report.memory = estimate_memory(counts, filled or written, args, world)
        report.warnings += bucket_warnings(written, filled or written, counts.trained)
        report.warnings += quantised_zero3_warnings(counts, filled or written, task)
    else:  # the Trainer's own optimizer, DDP on several GPUs: the whole model on every GPU, as it loads
        dtype = load_dtype(model_config)
        report.memory = estimate_plain_memory(counts, dtype.itemsize, world)
        report.warnings += sixteen_bit_warnings(counts, dtype, args, str(config))
    if counts is not None:
        report.memory.model, report.memory.gpu_memory_gb = run.model_name_or_path, gpu_memory_gb
        report.parameters = parameters_summary(counts)
    mem_errors, mem_warnings = memory_problems(report.memory, str(config or ""))
    report.errors += mem_errors
    report.warnings += mem_warnings
    if disk and run is not None and counts is not None:
        report.errors += _disk_problems(run, args, task, str(config))
    return report


def _counted(report: CheckReport, run, task, config) -> tuple[ParameterCount | None, Any, str | None]:
    """The model's parameter counts and config (vtt.check.memory.model_parameters), or why there are none; an
    adapter peft refuses is an error of the report."""
    if run is None:
        return None, None, None
    try:
        vision_frozen = bool(getattr(task, "freeze_vision_tower", False))
        return model_parameters(run.model_name_or_path, run.trainer, vision_frozen, task)
    except AdapterError as err:  # what get_peft_model would raise in the trainer, after the queue wait and the load
        fix = "name modules this model has in lora_target_modules, or leave it empty (the language model's linears)"
        report.errors.append(
            Problem("lora_target_modules", task.lora_target_modules, None, fix, "peft", str(err), str(config))
        )
        return None, None, f"no adapter for {run.model_name_or_path}: {err}"


def check_data(config: str | Path | None, manifest: str | Path, overrides: Sequence[str] = ()) -> int:
    """`vtt check --data`: print the manifest's visual-token distribution and each sample over budget;
    2 when the samples left out are over max_reject_ratio, else 0 (see the module docstring)."""
    from vtt.data.batches import row_tokens
    from vtt.data.budget import VisualBudget, distribution_line, has_pixel_budget
    from vtt.data.collate import sampling_for
    from vtt.data.datasets import manifest_entries
    from vtt.data.download import is_url
    from vtt.data.prepare import load_processor, model_config
    from vtt.models.families import family_of, set_pixel_budget

    with quiet():
        run, task, args, _, _ = training_arguments(run_command(config, overrides), 1)
    if run is None or run.trainer != "llava":
        raise ValueError("--data needs --config of a llava run: its model and video settings count the tokens")
    processor = load_processor(run.model_name_or_path)
    family = family_of(model_config(run.model_name_or_path), processor)
    set_pixel_budget(processor, task.min_pixels, task.max_pixels)
    sampling = sampling_for(processor, family, vars(task))
    samples, rejects = manifest_entries(manifest)
    knob = "num_frames" if sampling.fps is None else "fps/max_frames"
    # the trainer's own budget (vtt.data.budget), every clip counted
    budget = VisualBudget(
        processor, family, sampling, task.max_visual_tokens, knob, count_all=True, resample=task.fit_visual_tokens
    )
    over, urls, max_length, kept = [], 0, args.max_length, []
    for sample in samples:
        if is_url(sample.video):
            urls += 1
        elif reason := budget.check(sample):
            over.append(f"line {sample.line}: {sample.video}: {reason}")
        elif sample.line in budget.by_line:
            kept.append(sample)
    if max_length:  # the whole row as the collator builds it: a row over max_length is left out there
        totals = row_tokens(budget, processor, family, [(s.line, s.question, s.answer) for s in kept])
        fix = f"sample fewer frames ({knob})" + " or lower max_pixels" * has_pixel_budget(processor)
        for sample, total in zip(kept, totals, strict=True):
            if total > max_length:
                visual, frames = budget.by_line[sample.line]
                over.append(
                    f"line {sample.line}: {sample.video}: {round(total)} tokens ({visual} visual, {frames} frames, "
                    f"the rest text) are over max_length={max_length}: {fix}, or raise max_length"
                )
    counts, unknown = budget.counts, budget.unreadable
    where = f"{run.model_name_or_path} ({family.name}), {sampling_text(sampling)}"
    print(f"vtt check --data {manifest}: {where}")
    length = f"; max_length={max_length}" if max_length else ""
    print(f"  {distribution_line(counts, task.max_visual_tokens)}{length}")
    for line in over + unknown:
        print(f"  {line}")
    if urls:
        print(f"  {urls} sample(s) by URL not counted: their tokens are known once downloaded (vtt prepare)")
    if budget.fitted:
        print(f"  {len(budget.fitted)} sample(s) over max_visual_tokens sampled at the frames that fit")
    total = len(samples) + len(rejects)
    left_out = len(over) + len(unknown) + len(rejects)
    ratio = left_out / total if total else 0.0
    verdict = f"{left_out} of {total} samples would be left out ({len(over)} over budget, {len(unknown)} unreadable"
    verdict += f", {len(rejects)} bad manifest lines)"
    if ratio > task.max_reject_ratio:
        print(f"{verdict}: {ratio:.1%} is over max_reject_ratio {task.max_reject_ratio:.1%}: exit 2")
        return 2
    print(f"{verdict}: within max_reject_ratio {task.max_reject_ratio:.1%}")
    return 0


def sampling_text(sampling) -> str:
    frames = f"{sampling.num_frames} frames" if sampling.fps is None else f"{sampling.fps:g} fps"
    cap = f" (at most {sampling.max_frames})" if sampling.fps is not None and sampling.max_frames else ""
    return f"{frames}{cap}, decoded at {sampling.size or 'the source size'}"


def parameters_summary(counts: ParameterCount) -> dict[str, Any]:
    """What trains, for the report's line and --json: counts, share, and the adapter's settings."""
    adapter = counts.adapter
    return {
        "total": counts.total,
        "trainable": counts.trained,
        "percent": 100 * counts.trained / max(counts.total, 1),
        "adapter": asdict(adapter) if adapter is not None else None,
        "line": trainable_line(counts),
    }


def _on_gpu(command: RunCommand) -> bool:
    """Whether the job runs on GPUs: yes unless use_cpu is given true (the check itself parses with use_cpu,
    so that bf16 parses on a login node)."""
    return str(command.value("use_cpu")).lower() not in ("true", "1", "yes")


def _dataloader_problems(args: Any, config: str | Path | None) -> list[Problem]:
    """The DataLoader settings as torch's DataLoader checks them when the Trainer builds it, at the first
    step (after the queue wait and the model load): it refuses them the same way here, without workers."""
    from torch.utils.data import DataLoader

    try:
        with warnings.catch_warnings():  # its worker-count advice is about this machine, not the compute node
            warnings.simplefilter("ignore")
            DataLoader(
                [],
                num_workers=args.dataloader_num_workers,
                persistent_workers=args.dataloader_persistent_workers,
                prefetch_factor=args.dataloader_prefetch_factor,
            )
    except ValueError as err:
        fix = "set dataloader_num_workers above 0, or dataloader_persistent_workers false"
        fix += " and dataloader_prefetch_factor null"
        detail = f"torch's DataLoader refuses it: {err}"
        return [
            Problem("dataloader_num_workers", args.dataloader_num_workers, None, fix, "vtt", detail, str(config or ""))
        ]
    return []


def _token_batch_problems(run, task, config: str | Path | None) -> list[Problem]:
    """max_tokens_per_batch sizes micro batches from each clip's container: a vtt prepare folder has none, and
    the trainer would stop at its dataset build, after the queue wait."""
    from vtt.data.datasets import is_prepared

    sized = getattr(task, "max_tokens_per_batch", None)
    if not sized or run is None or not is_prepared(run.dataset):
        return []
    fix = "train on the manifest (clips decode in the DataLoader workers), or drop max_tokens_per_batch"
    detail = f"{run.dataset} is a vtt prepare folder: its rows hold frames, not the containers the tokens are read from"
    return [Problem("max_tokens_per_batch", sized, None, fix, "vtt", detail, str(config or ""))]


def _disk_problems(run, args, task, config: str) -> list[Problem]:
    """The run's checkpoints and final model against the free space where they will be written."""
    from vtt.check import disk

    try:
        disk.check_fits(disk.estimate(run, args, run.trainer, task))
    except ValueError as err:
        detail, _, fix = str(err).partition(". Fix: ")
        return [Problem("output_dir", args.output_dir, None, fix, "vtt", detail=detail, file=config)]
    return []


def fix_deepspeed(source: str | Path, out: str | Path) -> list[str]:
    """Write a copy of `source` with every value the Trainer owns set to "auto" (the batch keys and
    precision blocks added where absent); `source` is never touched and `out` appears whole or not at
    all. Returns the keys changed."""
    source, out = Path(source), Path(out)
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"--fix {out}: that is the file being checked; write the corrected copy elsewhere")
    config = read_deepspeed(source)
    changed = []
    for key in TRAINER_OWNED:
        parent, _, leaf = key.rpartition(".")
        node = get(config, parent) if parent else config
        if key in BATCH_KEYS and leaf not in config:
            config[leaf] = "auto"
            changed.append(key)
        elif isinstance(node, dict) and leaf in node and node[leaf] != "auto":
            node[leaf] = "auto"
            changed.append(key)
    for name in ("bf16", "fp16"):
        if not isinstance(config.get(name), dict):
            config[name] = {"enabled": "auto"}
            changed.append(f"{name}.enabled")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as sink:
            json.dump(config, sink, indent=2)
            sink.write("\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return changed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deepspeed", help="DeepSpeed JSON file (default: the one the run config names)")
    parser.add_argument("--gpus", type=int, help="GPUs per node (needed unless only --data is checked)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (world size = nodes x gpus)")
    parser.add_argument("--config", help="run config, e.g. jobs/llava.yaml (default: TrainingArguments defaults)")
    parser.add_argument(
        "--gpu-memory", type=float, dest="gpu_memory", help="GB of memory per GPU, for the memory check"
    )
    parser.add_argument(
        "--disk", action="store_true", help="also check the free space where output_dir will be written (run it there)"
    )
    parser.add_argument(
        "--data", type=Path, help="manifest whose samples' visual tokens to predict and check (needs --config)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--fix", type=Path, help='write a copy with every Trainer-owned value "auto" here')
    parser.epilog = "Other --name value pairs are training arguments (--per_device_train_batch_size 2 --bf16 true)."


def run(args: argparse.Namespace, extra: list[str]) -> int:
    config = shipped(args.config) if args.config else None
    if args.gpus is None and not args.data:
        raise ValueError("--gpus is needed: GPUs per node, to check the DeepSpeed file (or --data to check a manifest)")
    data_code = check_data(config, args.data, extra) if args.data else 0
    if args.gpus is None:
        return data_code
    report = check_run(config, args.gpus, args.nodes, extra, args.deepspeed, args.gpu_memory, disk=args.disk)
    if args.fix and not report.deepspeed:
        raise ValueError("--fix writes a corrected copy of a DeepSpeed file, and this run names none")
    if args.fix:
        changed = fix_deepspeed(shipped(report.deepspeed), args.fix)
        note = f"wrote {args.fix}: " + (", ".join(changed) + ' set to "auto"' if changed else "nothing to change")
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return max(data_code, 0 if report.ok else 1)
