"""Score a model's answers on held-out data (`vtt eval`, `make eval`): BLEU, chrF, exact match, length.

    vtt eval --model outputs/demo/runs/tiny-seq2seq --data outputs/demo/videos/manifest.jsonl
    vtt eval --model outputs/demo/runs/tiny-llava --data held-out/ --predictions preds.jsonl   # score a file

Generates with `vtt.after.predict` (or reads predictions already made), scores them with `vtt.after.metrics`,
prints a table and writes MODEL/eval_generation.json plus the predictions beside it
(eval_predictions.jsonl). The trainers call evaluate_model() at the end of a run with an eval split.
MODEL may be an adapter run (use_peft): vtt.after.predict loads its base with the adapter applied.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from vtt.after.metrics import DESCRIPTIONS, read_predictions, score
from vtt.after.predict import (
    add_generation_arguments,
    generation_settings,
    load_items,
    predict,
    trainer_of_model,
    write_jsonl,
)
from vtt.files import write_atomically
from vtt.outputs import check_output_file

RESULTS = "eval_generation.json"
PREDICTIONS = "eval_predictions.jsonl"


def default_out(model: str) -> Path:
    """MODEL/eval_generation.json for a local folder; outputs/eval/<hub id>/eval_generation.json for a hub id."""
    if Path(model).is_dir():
        return Path(model) / RESULTS
    return Path("outputs/eval") / re.sub(r"[^A-Za-z0-9._-]+", "--", model) / RESULTS


def is_failed(row: dict[str, Any]) -> bool:
    """A row `vtt predict` could not answer: no prediction, and the error saying why."""
    return row.get("prediction") is None and "error" in row


def scored(rows: list[dict[str, Any]], where: str) -> dict[str, float]:
    """Metrics over the rows that have a prediction, with `failed` counting those that do not (their `error`
    says why); a ValueError names the first scored row without a reference."""
    answered = [row for row in rows if not is_failed(row)]
    failed = len(rows) - len(answered)
    for number, row in enumerate(answered, start=1):
        for key in ("prediction", "reference"):
            if not isinstance(row.get(key), str):
                raise ValueError(
                    f"{where}: sample {number} (id {row.get('id')!r}) has no {key}; "
                    "eval needs data with answers (the manifest's answer/caption field)"
                )
    if not answered:
        raise ValueError(f"{where}: none of its {len(rows)} samples got a prediction; their errors say why")
    metrics = score([row["prediction"] for row in answered], [row["reference"] for row in answered])
    return {**metrics, "failed": failed}


def evaluate_model(
    model: str,
    data: str | Path,
    out: str | Path | None = None,
    batch_size: int = 8,
    predictions: str | Path | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Generate (or read) predictions for `data`, score them, write the results JSON and the predictions."""
    out = Path(out) if out else default_out(model)
    for written in (out, out.with_name(PREDICTIONS)):  # before the model loads
        check_output_file(written, "eval", [data, *([predictions] if predictions else [])])
    if predictions:
        rows = read_predictions(predictions)
        trainer = None
    else:
        trainer = trainer_of_model(model)
        rows = predict(model, load_items(data, trainer), batch_size, **settings)
    metrics = scored(rows, str(predictions or data))
    rows_path = write_jsonl(rows, out.with_name(PREDICTIONS)) if not predictions else Path(predictions)
    results = {
        "model": str(model),
        "trainer": trainer,
        "data": str(data),
        "predictions": str(rows_path),
        "metrics": metrics,
    }
    write_atomically(out, json.dumps(results, indent=2) + "\n")
    return results


def print_table(results: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{results['model']} on {results['data']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it is")
    for name, value in results["metrics"].items():
        table.add_row(name, f"{value:.2f}" if isinstance(value, float) else str(value), DESCRIPTIONS.get(name, ""))
    console = Console()
    console.print(table)
    console.print(f"vtt eval: results -> {out}; predictions -> {results['predictions']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generation_arguments(parser)
    parser.add_argument("--data", required=True, help="held-out data with answers: a manifest or a prepared folder")
    parser.add_argument("--out", type=Path, help=f"results JSON (default: MODEL/{RESULTS})")
    parser.add_argument("--predictions", type=Path, help="score this `vtt predict` JSONL instead of generating")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    out = args.out or default_out(args.model)
    results = evaluate_model(args.model, args.data, out, args.batch_size, args.predictions, **generation_settings(args))
    print_table(results, out)
    return 0
