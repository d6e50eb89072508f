"""Micro batches sized by tokens (max_tokens_per_batch): groups under the budget, nearly full, every sample
once; the tokens predicted from the containers match what the collator builds from the decoded clips."""

from __future__ import annotations

import random

import pytest
from test_video_families import SETTINGS, VIDEO_FAMILIES, loaded, tiny  # noqa: F401  (tiny: its fixture)

from vtt.data.batches import predicted_tokens, token_groups
from vtt.data.budget import VisualBudget
from vtt.data.collate import VisionCollator, sampling_for
from vtt.data.datasets import llava_dataset


def clip_lengths(n: int, seed: int = 0) -> list[int]:
    """Tokens of samples with clips of 2-60 s at fps 2 (4-120 frames) of ~150 tokens a frame, plus text."""
    rng = random.Random(seed)
    return [rng.randint(4, 120) * 150 + rng.randint(20, 80) for _ in range(n)]


def test_groups_stay_under_the_budget_and_hold_every_sample_once():
    tokens = clip_lengths(500)
    groups = token_groups(tokens, 24_000, seed=1)
    assert sorted(i for group in groups for i in group) == list(range(500))
    assert all(sum(tokens[i] for i in group) <= 24_000 for group in groups)
    assert groups != token_groups(tokens, 24_000, seed=2), "the seed orders the groups"


def test_groups_come_out_nearly_full_so_ranks_carry_alike():
    tokens = clip_lengths(2000)
    budget = 24_000
    sums = sorted(sum(tokens[i] for i in group) for group in token_groups(tokens, budget))
    assert len(sums) <= sum(tokens) / budget * 1.02 + 1, "close to the fewest groups the tokens allow"
    assert sums[len(sums) // 20] >= 0.95 * budget, "all but the last few groups within 5% of the budget"


def test_a_sample_over_the_budget_goes_alone():
    groups = token_groups([500, 90, 20, 30], 100)
    assert sorted(map(sorted, groups)) == [[0], [1], [2, 3]]  # 90 leaves room for neither 30 nor 20


@pytest.mark.parametrize("name", [*VIDEO_FAMILIES, "llava"])
def test_tokens_predicted_from_the_containers_match_the_collated_rows(name, tiny, demo_inputs):  # noqa: F811
    processor, _, family = loaded(tiny(name))
    sampling = sampling_for(processor, family, SETTINGS)
    budget = VisualBudget(processor, family, sampling, count_all=True)
    train = llava_dataset(demo_inputs["manifest"], sampling, None, 1.0, family.fixed_frames, budget)
    predicted = predicted_tokens(train, budget, processor, family)
    collate = VisionCollator(processor, family)
    real = [collate.row(train[i])["input_ids"].shape[1] for i in range(len(train))]
    assert len(predicted) == len(real) == len(budget.by_line)
    for want, got in zip(real, predicted, strict=True):
        assert abs(got - want) <= 2, (name, predicted, real)


def test_two_ranks_train_packed_token_sized_groups_of_unequal_sample_counts(tiny, demo_inputs, tmp_path):  # noqa: F811
    """The shipped Qwen2.5-VL config on its tiny model, 2 processes, each micro batch one packed group of
    at most 300 predicted tokens: groups of different sample counts on the two ranks train to the end."""
    import json

    from conftest import FAMILY_CONFIGS, ROOT, logged_losses, train, twin

    out = tmp_path / "run"
    config = ROOT / "jobs" / FAMILY_CONFIGS["qwen2_5_vl"]
    overrides = twin(config, demo_inputs, out, steps=3, model=tiny("qwen2_5_vl"))
    overrides += ["--report_to", "none", "--padding_free", "true", "--max_tokens_per_batch", "300"]
    overrides += ["--global_batch_size", "4", "--save_strategy", "no"]
    train(str(config.relative_to(ROOT)), 2, overrides)
    record = json.loads((out / "vtt-run.json").read_text())
    groups = record["token_groups"]
    assert record["padding_free"] and groups["max_tokens_per_batch"] == 300
    assert groups["tokens_per_group"]["max"] <= 300 and 1 < groups["samples_per_group"] < 8
    assert len(logged_losses(out)) == 3
