"""The scores `vtt eval` and the seq2seq trainer report, on strings whose answers are known."""

from __future__ import annotations

import pytest
import sacrebleu

from vtt.after.metrics import score

PREDICTIONS = ["a red square moves left", "the blue square moves up", "A Green  square moves right", "yellow"]
REFERENCES = ["a red square moves left", "a blue square moves up", "a green square moves right", "a yellow square"]


def test_bleu_and_chrf_equal_sacrebleu_for_the_same_input():
    scores = score(PREDICTIONS, REFERENCES)
    assert scores["bleu"] == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert scores["chrf"] == sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100


def test_exact_match_ignores_case_and_spacing_but_not_words():
    # 1st identical, 3rd differs only in case and spacing; 2nd and 4th differ in words.
    assert score(PREDICTIONS, REFERENCES)["exact_match"] == 50.0


def test_mean_lengths_count_words():
    scores = score(PREDICTIONS, REFERENCES)
    assert scores["prediction_words"] == (5 + 5 + 5 + 1) / 4
    assert scores["reference_words"] == (5 + 5 + 5 + 3) / 4
    assert scores["samples"] == 4


def test_identical_text_scores_full_marks():
    scores = score(REFERENCES, REFERENCES)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["exact_match"] == 100.0


def test_unpaired_predictions_are_rejected():
    with pytest.raises(ValueError, match="3 predictions but 4 references"):
        score(PREDICTIONS[:3], REFERENCES)
