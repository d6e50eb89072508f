"""An adapter run merged into its base as one full model (`vtt merge RUN`, `make merge RUN=...`).

    vtt merge outputs/runs/llava-lora                       # -> outputs/runs/llava-lora/merged
    vtt merge outputs/runs/llava-lora --out models/llava-merged

A run trained with `use_peft: true` saved only its adapter (adapter_config.json + adapter_model.safetensors)
and names its base in adapter_config.json. The merged folder is the base with the adapter's weights added in
(peft's merge_and_unload): it loads with `from_pretrained` and no peft, as a full run's output does, and holds
the run's tokenizer or processor, its generation config and its vtt-run.json (so `vtt predict` asks it as the
run was taught), and vtt-merge.json (which adapter it was made from).

The default folder RUN/merged stays out of `vtt push RUN` (that pushes the adapter); `vtt push RUN --merged`
pushes it. The merge never writes over its input (the run, the base) nor over a folder vtt merge did not
write, and never leaves half a model: it is written into a staging folder beside the target and renamed into
place (vtt.outputs). A QLoRA run (load_in_4bit) is merged into the base at full precision.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from vtt.files import RUN_RECORD, write_atomically
from vtt.models import adapters
from vtt.outputs import claim_output

MERGED = "merged"  # RUN/merged: the default folder (vtt.after.hub keeps it out of the adapter's push)
RECORD = "vtt-merge.json"


def default_out(run: str | Path) -> Path:
    return Path(run) / MERGED


def check_adapter(run: str | Path) -> Path:
    """`run` when it holds an adapter; a ValueError naming the folder and what it holds otherwise."""
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"{run}: no such folder: pass the output_dir of a run trained with use_peft: true")
    if adapters.is_adapter(run):
        return run
    if (run / "config.json").is_file():
        raise ValueError(
            f"{run}: holds a full model (config.json), no adapter ({adapters.ADAPTER_CONFIG}): there is nothing "
            "to merge; use the folder as it is"
        )
    raise ValueError(
        f"{run}: holds no adapter ({adapters.ADAPTER_CONFIG}): pass the output_dir of a run trained with "
        "use_peft: true (or one of its checkpoint-N folders)"
    )


def adapter_digest(run: str | Path) -> str:
    """sha256 of the adapter's weights: which adapter a merged folder was made from."""
    digest = hashlib.sha256()
    with open(Path(run) / adapters.ADAPTER_WEIGHTS, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_of(run: str | Path, trainer: str) -> dict[str, Any]:
    return {
        "adapter": str(Path(run).resolve()),
        "base": adapters.base_of(run),
        "trainer": trainer,
        "adapter_sha256": adapter_digest(run),
    }


def is_merge_of(merged: str | Path, run: str | Path) -> bool:
    """True when `merged` is a finished merge of the adapter `run` holds now (same weights, same base)."""
    record = Path(merged) / RECORD
    if not record.is_file() or not (Path(merged) / "config.json").is_file():
        return False
    try:
        saved = json.loads(record.read_text())
    except ValueError:
        return False
    return saved.get("adapter_sha256") == adapter_digest(run) and saved.get("base") == adapters.base_of(run)


def merge_inputs(run: Path) -> list[Path]:
    """What the merge reads and --out must not be or hold: the run and a local base model."""
    base = Path(adapters.base_of(run))
    return [run, *([base] if base.exists() else [])]


def write_merged(run: Path, out: Path, trainer: str) -> None:
    """Base + adapter of `run` into `out` (a fresh folder), with the run's tokenizer/processor, generation
    config and run record beside the weights."""
    from transformers import AutoProcessor, AutoTokenizer, GenerationConfig

    from vtt.after.predict import tokenizer_source

    adapters.merge(run, out, trainer)
    source = tokenizer_source(str(run))
    loader = AutoProcessor if trainer == "llava" else AutoTokenizer
    loader.from_pretrained(source).save_pretrained(out)
    if (run / "generation_config.json").is_file():  # the run's (seq2seq: its forced language) over the base's
        GenerationConfig.from_pretrained(run).save_pretrained(out)
    if (run / RUN_RECORD).is_file():
        shutil.copy2(run / RUN_RECORD, out / RUN_RECORD)
    write_atomically(out / RECORD, json.dumps(record_of(run, trainer), indent=2) + "\n")


def merge_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Merge the adapter run `run` into `out` (default RUN/merged), replacing an earlier merge there; returns
    the folder. A ValueError (nothing written) when `run` holds no adapter or `out` may not be written."""
    from vtt.after.predict import trainer_of_model

    run = check_adapter(run)
    out = Path(out) if out else default_out(run)
    trainer = trainer_of_model(str(run))
    with claim_output(out, "merge", merge_inputs(run)) as claim:
        staging = claim.staging()
        write_merged(run, staging, trainer)
        return claim.publish(staging)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a run trained with use_peft: true (its output_dir or a checkpoint)")
    parser.add_argument(
        "--out", type=Path, help=f"folder for the merged model (default: RUN/{MERGED}; an earlier merge is replaced)"
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    out = merge_run(args.run, args.out)
    print(f"vtt merge: {args.run} (adapter on {adapters.base_of(args.run)}) -> {out}: a full model, no peft needed")
    return 0


def merged_for(run: str | Path) -> Path:
    """RUN/merged as a merge of the adapter `run` holds now (`vtt push RUN --merged`): kept when it is one,
    made (or made again, over an earlier merge) when it is not."""
    run = check_adapter(run)
    out = default_out(run)
    if is_merge_of(out, run):
        print(f"vtt merge: {out} is the merge of the adapter in {run}: kept")
        return out
    out = merge_run(run, out)
    print(f"vtt merge: {run} (adapter on {adapters.base_of(run)}) -> {out}")
    return out
