"""Scores of generated text against references: BLEU and chrF (sacrebleu), exact match, mean length; and the
reader of a `vtt predict` JSONL, which `vtt eval` scores and `vtt report` samples.

    vtt eval --model outputs/demo/runs/tiny-seq2seq --data outputs/demo/videos/manifest.jsonl

This module scores strings and reads predictions files; `vtt.after.evaluate` generates them and the seq2seq
trainer scores its `predict_with_generate` output here on every evaluation. It imports nothing else of vtt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sacrebleu

# name -> what the number is, for tables and the report
DESCRIPTIONS = {
    "bleu": "corpus BLEU (sacrebleu, 13a tokenizer), 0-100",
    "chrf": "corpus chrF (sacrebleu), 0-100",
    "exact_match": "% of predictions equal to their reference (case and spacing ignored)",
    "prediction_words": "mean words per prediction",
    "reference_words": "mean words per reference",
    "samples": "predictions scored",
    "failed": "samples with no prediction (a clip that failed to decode, a bad manifest line): not scored",
}


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `vtt predict` JSONL; each must hold a prediction and a reference."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such predictions file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON object: {err}") from None
        rows.append(row)
    return rows


def normalise(text: str) -> str:
    """Lower case, runs of whitespace collapsed: what exact match compares."""
    return " ".join(text.split()).casefold()


def is_exact_match(prediction: str | None, reference: str | None) -> bool:
    """Equal after `normalise`; a missing prediction or reference never matches."""
    return prediction is not None and reference is not None and normalise(prediction) == normalise(reference)


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every metric of DESCRIPTIONS for predictions[i] against references[i]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: they must pair up")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    count = len(predictions)
    matches = sum(is_exact_match(p, r) for p, r in zip(predictions, references, strict=True))
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "exact_match": 100.0 * matches / count,
        "prediction_words": sum(len(p.split()) for p in predictions) / count,
        "reference_words": sum(len(r.split()) for r in references) / count,
        "samples": count,
    }
