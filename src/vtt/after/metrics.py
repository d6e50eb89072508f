"""Scores of generated text against references: BLEU and chrF (sacrebleu), exact match, mean length.

    vtt eval --model outputs/demo/runs/tiny-seq2seq --data outputs/demo/videos/manifest.jsonl

This module only scores strings; `vtt.after.evaluate` generates them and the seq2seq trainer scores its
`predict_with_generate` output here on every evaluation. It imports nothing else of vtt.
"""

from __future__ import annotations

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


def normalise(text: str) -> str:
    """Lower case, runs of whitespace collapsed: what exact match compares."""
    return " ".join(text.split()).casefold()


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every metric of DESCRIPTIONS for predictions[i] against references[i]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: they must pair up")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    count = len(predictions)
    matches = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True))
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "exact_match": 100.0 * matches / count,
        "prediction_words": sum(len(p.split()) for p in predictions) / count,
        "reference_words": sum(len(r.split()) for r in references) / count,
        "samples": count,
    }
