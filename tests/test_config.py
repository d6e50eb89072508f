"""Run configs: overrides, unknown keys, and gradient accumulation derived from global_batch_size."""

from __future__ import annotations

import os
from pathlib import Path

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


def config_with(tmp_path, base: str = "jobs/tiny-llava.yaml", **values) -> str:
    """A copy of a shipped run config with `values` written over it (as YAML types them)."""
    import yaml

    data = yaml.safe_load(Path(base).read_text())
    data.update(values)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("base", "key", "value", "fix"),
    [
        ("jobs/tiny-llava.yaml", "num_frames", 0, "give 1 or more frames per clip"),
        ("jobs/tiny-llava.yaml", "fps", -2.0, "give a positive rate"),
        ("jobs/tiny-llava.yaml", "max_frames", 0, "give 1 or more, or null for no cap"),
        ("jobs/tiny-llava.yaml", "max_reject_ratio", 1.5, "give a share from 0 (reject nothing) to 1"),
        ("jobs/tiny-llava.yaml", "max_steps", -5, "or -1 to train num_train_epochs"),
        ("jobs/tiny-llava.yaml", "learning_rate", -0.001, "give a learning rate of 0 or more"),
        ("jobs/tiny-llava.yaml", "global_batch_size", 0, "give 1 or more samples per optimizer step"),
        ("jobs/seq2seq.yaml", "num_train_epochs", -1, "give a positive number of epochs"),
        ("jobs/seq2seq.yaml", "max_source_length", 0, "give 1 or more tokens"),
        ("jobs/seq2seq.yaml", "max_target_length", -3, "give 1 or more tokens"),
        ("jobs/seq2seq.yaml", "save_steps", 0, 'or save_strategy: "no"'),
        ("jobs/seq2seq.yaml", "seed", -1, "give a seed from 0 to 4294967295"),
    ],
)
def test_value_out_of_range_is_refused_naming_file_field_value_and_fix(tmp_path, base, key, value, fix):
    config = config_with(tmp_path, base, **{key: value})
    with pytest.raises(ValueError) as raised:
        parse_run_config(["--config", config], world=1, use_cpu=True)
    message = str(raised.value)
    assert message.startswith(f"{config}: {key} = {value!r}: ") and fix in message, message


def test_micro_batch_of_zero_is_a_value_error_not_a_division_by_zero(tmp_path):
    # tiny-llava has global_batch_size 4: the accumulation it derives divided by the micro batch.
    config = config_with(tmp_path, per_device_train_batch_size=0)
    with pytest.raises(ValueError, match=r"bad.yaml: per_device_train_batch_size = 0: give 1 or more samples per GPU"):
        parse_run_config(["--config", config], world=1, use_cpu=True)
    with pytest.raises(ValueError, match=r"per_device_train_batch_size = 0 \(--per_device_train_batch_size on the"):
        parse_run_config(["--config", "jobs/tiny-llava.yaml", "--per_device_train_batch_size", "0"], world=2)


def test_float_written_for_whole_number_is_refused_not_truncated(tmp_path):
    config = config_with(tmp_path, num_frames=2.5)
    with pytest.raises(ValueError, match=r"bad.yaml: num_frames = 2.5: must be a whole number"):
        parse_run_config(["--config", config], world=1, use_cpu=True)
    # The same on the command line is argparse's error, raised instead of printing the usage and exiting.
    with pytest.raises(ValueError, match=r"tiny-llava.yaml: argument --num_frames.*invalid int value: '2.5'"):
        parse_run_config(["--config", "jobs/tiny-llava.yaml", "--num_frames", "2.5"], world=1, use_cpu=True)


def test_choice_and_boolean_written_in_yaml_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"video_backend = 'decord': choose one of opencv, pyav"):
        parse_run_config(["--config", config_with(tmp_path, video_backend="decord")], world=1, use_cpu=True)
    with pytest.raises(ValueError, match=r"resume = 1: write true or false"):
        parse_run_config(["--config", config_with(tmp_path, resume=1)], world=1, use_cpu=True)


def test_every_bad_value_is_listed_at_once(tmp_path):
    config = config_with(tmp_path, num_frames=0, learning_rate=-1.0, adam_beta2=1.0)
    with pytest.raises(ValueError) as raised:
        parse_run_config(["--config", config], world=1, use_cpu=True)
    lines = str(raised.value).splitlines()
    assert lines[0] == f"{config}: 3 bad values:"
    assert {line.split(" = ")[0].strip() for line in lines[1:]} == {"num_frames", "learning_rate", "adam_beta2"}


def test_save_steps_of_zero_is_only_refused_when_saving_by_steps(tmp_path):
    # tiny-llava saves nothing ("no"): save_steps is not read.
    _, _, training = parse_run_config(["--config", config_with(tmp_path, save_steps=0)], world=1, use_cpu=True)
    assert training.save_steps == 0
    with pytest.raises(ValueError, match="save_steps = 0"):
        parse_run_config(["--config", config_with(tmp_path, save_steps=0, save_strategy="steps")], world=1)


def test_unknown_config_key_names_the_closest_known_one(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("trainer: seq2seq\nmodel_name_or_path: m\ndataset: d\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key 'learnig_rate': did you mean 'learning_rate'\?"):
        parse_run_config(["--config", str(config)], world=1)


TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a real token, made up


@pytest.mark.parametrize(
    ("values", "key"),
    [({"env": {"HF_TOKEN": TOKEN}}, "env.HF_TOKEN"), ({"hub_token": TOKEN}, "hub_token"),
     ({"run_name": f"run-{TOKEN}"}, "run_name")],
)  # fmt: skip
def test_token_in_run_config_is_refused_masked_before_the_parse_exports_it(tmp_path, monkeypatch, values, key):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    config = config_with(tmp_path, **values)
    with pytest.raises(ValueError) as raised:
        parse_run_config(["--config", config], world=1, use_cpu=True)
    message = str(raised.value)
    assert message.startswith(f"{config}: {key} (hf_…4567) holds what looks like a Hugging Face token")
    assert "Export HF_TOKEN in the shell you submit from" in message and TOKEN not in message
    assert "HF_TOKEN" not in os.environ  # TrlParser exports a config's env: block; it never got that far


def test_token_on_the_command_line_is_refused_masked():
    with pytest.raises(ValueError, match=r"the command line: --hub_model_id \(hf_…4567\) holds") as raised:
        parse_run_config(["--config", "jobs/tiny-llava.yaml", "--hub_model_id", TOKEN], world=1, use_cpu=True)
    assert TOKEN not in str(raised.value)


@pytest.mark.parametrize("command", ["check", "render", "submit"])
def test_commands_report_a_bad_value_in_one_line_before_the_queue(tmp_path, capsys, command):
    from vtt.cli import main as vtt

    config = config_with(tmp_path, num_frames=0)
    where = ["--gpus", "1"] if command == "check" else ["--cluster", "ci", "--gpus", "1", "-o", str(tmp_path / "j.sh")]
    if command == "submit":
        where = where[:-2]
    assert vtt([command, "--config", config, *where]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"vtt {command}: error: {config}: num_frames = 0: give 1 or more frames per clip\n"
    assert not (tmp_path / "j.sh").exists()
