"""argv is read once: vtt.config.read_command turns a run's command line into a RunCommand, and every consumer
(the parse, the offline check, the Hub plan, `vtt check`, the launchers) reads it from there, so the
spellings a user types give one answer everywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vtt.check.deepspeed import check_run
from vtt.check.offline import named_values
from vtt.cluster.local import deepspeed_command
from vtt.config import parse_run_config, read_command

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "jobs/tiny-llava.yaml"
SPELLINGS = {
    "--config X": ["--config", CONFIG, "--learning_rate", "0.003", "--model_name_or_path", "someone/model"],
    "--config=X": [f"--config={CONFIG}", "--learning_rate=0.003", "--model_name_or_path=someone/model"],
    "overrides first": ["--learning_rate", "0.003", "--model_name_or_path", "someone/model", "--config", CONFIG],
    "launcher's --local_rank=0": [
        "--local_rank=0",
        f"--config={CONFIG}",
        "--learning_rate",
        "0.003",
        "--model_name_or_path=someone/model",
    ],
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_consumer_gives_the_same_answer_for_each_spelling(spelling):
    command = read_command(SPELLINGS[spelling])
    assert command.config == Path(CONFIG) and command.trainer == "llava"
    run, _, training = parse_run_config(command, world=1, use_cpu=True)
    assert training.learning_rate == 0.003 and run.model_name_or_path == "someone/model"
    values = command.values()  # the Hub plan's run config, for the model card
    assert values["learning_rate"] == 0.003 and values["model_name_or_path"] == "someone/model"
    assert "local_rank" not in values and "config" not in values
    assert named_values(command)["model_name_or_path"] == "someone/model"  # the offline check and `vtt stage`
    assert "vtt.train.llava" in deepspeed_command(command, 1)


def test_a_config_without_trainer_override_takes_the_files_and_the_command_line_wins():
    assert read_command(["--config", "jobs/tiny-seq2seq.yaml"]).trainer == "seq2seq"
    assert read_command(["--config", "jobs/tiny-seq2seq.yaml", "--trainer=llava"]).trainer == "llava"


@pytest.mark.parametrize("words", [["--deepspeed", "deepspeed/zero3.json"], ["--deepspeed=deepspeed/zero3.json"]])
def test_vtt_check_reads_the_deepspeed_file_the_command_line_names_in_either_spelling(words):
    report = check_run(CONFIG, 2, 1, ["--use_cpu", "true", *words])
    assert report.deepspeed == "deepspeed/zero3.json"


def test_config_given_twice_or_without_a_value_is_refused_clearly():
    with pytest.raises(ValueError, match="--config is given twice"):
        read_command(["--config", CONFIG, "--config", "jobs/llava.yaml"])
    with pytest.raises(ValueError, match="--config needs a run config file"):
        read_command(["--config"])


def test_no_module_but_config_reads_the_command_line():
    """The walk of argv goes one way: only vtt.config (and the command table, which dispatches) touch sys.argv
    or look for options in a list of words."""
    readers = []
    for path in sorted((ROOT / "src" / "vtt").rglob("*.py")):
        if path.name in ("config.py", "cli.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "argv" and getattr(node.value, "id", "") == "sys":
                readers.append(f"{path.name}:{node.lineno} sys.argv")
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and str(c.value).startswith("--") for c in [node.left]
            ):
                readers.append(f"{path.name}:{node.lineno} looks for {node.left.value!r} in a list of words")
    assert not readers, readers
