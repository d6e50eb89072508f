"""Run configs: overrides, unknown keys, and gradient accumulation derived from global_batch_size."""

from __future__ import annotations

import pytest

from vtt.config import gradient_accumulation_for, parse_run_config


def test_command_line_overrides_config_value():
    _, _, training = parse_run_config(["--config", "jobs/tiny-llava.yaml", "--learning_rate", "1e-4"], world=1)
    assert training.learning_rate == pytest.approx(1e-4)


def test_boolean_override_uses_hf_convention():
    _, _, training = parse_run_config(["--config", "jobs/tiny-seq2seq.yaml", "--bf16", "true"], world=1, use_cpu=True)
    assert training.bf16 is True


def test_unknown_command_line_key_is_named():
    with pytest.raises(ValueError, match="--no_such_argument"):
        parse_run_config(["--config", "jobs/tiny-llava.yaml", "--no_such_argument", "1"], world=1)


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("trainer: seq2seq\nmodel_name_or_path: m\ndataset: d\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnig_rate"):
        parse_run_config(["--config", str(config)], world=1)


def test_missing_trainer_field_names_file_and_choices(tmp_path):
    config = tmp_path / "no-trainer.yaml"
    config.write_text("model_name_or_path: m\ndataset: d\n")
    with pytest.raises(ValueError, match=r"no-trainer.yaml: field 'trainer' is None; set it to one of llava, seq2seq"):
        parse_run_config(["--config", str(config)], world=1)


@pytest.mark.parametrize(("world", "expected"), [(1, 2), (2, 1)])
def test_gradient_accumulation_follows_world_size(world, expected):
    # tiny-llava: global_batch_size 4, per_device_train_batch_size 2
    _, _, training = parse_run_config(["--config", "jobs/tiny-llava.yaml"], world=world)
    assert training.gradient_accumulation_steps == expected
    assert training.hf_deepspeed_config.config["gradient_accumulation_steps"] == expected


def test_global_batch_that_does_not_divide_names_valid_layouts():
    with pytest.raises(ValueError, match=r"global_batch_size=4 is not a multiple of .* = 6.*GPU counts .*\[1, 2\]"):
        gradient_accumulation_for(4, micro_batch=2, world=3)


def test_explicit_accumulation_that_contradicts_global_batch_is_an_error():
    argv = ["--config", "jobs/tiny-llava.yaml", "--gradient_accumulation_steps", "3"]
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3 was given, but global_batch_size=4 needs 2"):
        parse_run_config(argv, world=1)
