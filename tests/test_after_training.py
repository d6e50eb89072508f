"""After training: `vtt predict`, `vtt eval`, `vtt report` on tiny models trained here through `vtt run`.

One run per trainer (6 steps, an eval split, evaluation every 3 steps) is shared by the whole module.
The report is opened in a real headless Chromium and its screenshot is checked for the loss curve.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from conftest import ROOT, TINY_CONFIGS, tiny_run, train
from PIL import Image

from vtt.after.metrics import score
from vtt.after.predict import answerer, trainer_of_model
from vtt.after.report import TRAIN_COLOUR, write_report

pytestmark = pytest.mark.slow

SECRET = "hf_thisIsNotARealTokenButMustNeverBeWritten"


def vtt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "vtt.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"vtt {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def runs(demo_inputs, held_out, tmp_path_factory) -> dict[str, Path]:
    """Each trainer's output_dir after 6 steps with an eval split, HF_TOKEN set in the environment."""
    out = tmp_path_factory.mktemp("runs")
    folders = {}
    os.environ["HF_TOKEN"] = SECRET
    try:
        for trainer, config in TINY_CONFIGS.items():
            folder = out / trainer
            overrides = tiny_run(demo_inputs, trainer)
            overrides += ["--eval_dataset", str(held_out), "--output_dir", str(folder), "--max_steps", "6"]
            overrides += ["--eval_strategy", "steps", "--eval_steps", "3", "--per_device_eval_batch_size", "2"]
            if trainer == "seq2seq":
                overrides += ["--predict_with_generate", "true", "--generation_max_length", "12"]
            train(config, 1, overrides)
            folders[trainer] = folder
    finally:
        del os.environ["HF_TOKEN"]
    return folders


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_trainer_saves_the_run_and_deepspeed_config_it_used(runs, trainer):
    record = json.loads((runs[trainer] / "vtt-run.json").read_text())
    assert record["trainer"] == trainer
    assert record["run"]["eval_dataset"].endswith("eval.jsonl")
    assert record["training"]["max_steps"] == 6
    deepspeed = json.loads((runs[trainer] / "deepspeed.json").read_text())
    assert deepspeed == record["deepspeed"]
    assert deepspeed["zero_optimization"]["stage"] == 2
    # "auto" filled in by the Trainer: 1 process x micro batch 2 x 2 accumulation steps
    assert (deepspeed["train_batch_size"], deepspeed["gradient_accumulation_steps"]) == (4, 2)
    assert "auto" not in json.dumps(deepspeed)
    assert not list(runs[trainer].glob(".*partial*")), "a temporary file was left behind"


@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_no_file_of_the_run_holds_the_hf_token(runs, trainer):
    files = [path for path in runs[trainer].rglob("*") if path.is_file()]
    assert len(files) > 5
    leaking = [str(path) for path in files if SECRET.encode() in path.read_bytes()]
    assert not leaking


@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_tensorboard_receives_the_logs(runs, trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = list((runs[trainer] / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert len(accumulator.Scalars("train/loss")) == 6


def test_seq2seq_trainer_scores_generations_on_eval_steps(runs):
    history = json.loads((runs["seq2seq"] / "trainer_state.json").read_text())["log_history"]
    evaluations = [entry for entry in history if "eval_bleu" in entry]
    assert [entry["step"] for entry in evaluations] == [3, 6]
    for entry in evaluations:
        assert entry["eval_samples"] == 3 and 0 <= entry["eval_chrf"] <= 100 and "eval_exact_match" in entry


def test_llava_trainer_logs_eval_loss_on_eval_steps(runs):
    history = json.loads((runs["llava"] / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [3, 6]


@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_end_of_training_eval_scores_every_held_out_sample(runs, held_out, trainer):
    results = json.loads((runs[trainer] / "eval_generation.json").read_text())
    rows = read_jsonl(runs[trainer] / "eval_predictions.jsonl")
    assert results["trainer"] == trainer
    assert [row["id"] for row in rows] == ["clip000", "clip001", "clip002"]
    assert [row["reference"] for row in rows] == [line["answer"] for line in read_jsonl(held_out)]
    predictions, references = [row["prediction"] for row in rows], [row["reference"] for row in rows]
    assert results["metrics"]["bleu"] == sacrebleu.corpus_bleu(predictions, [references]).score
    assert results["metrics"]["chrf"] == sacrebleu.corpus_chrf(predictions, [references]).score
    assert results["metrics"] == {**score(predictions, references), "failed": 0}


@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_model_folder_config_tells_which_trainer_made_it(runs, trainer):
    assert trainer_of_model(str(runs[trainer])) == trainer


def test_a_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        trainer_of_model(str(tmp_path))


@pytest.mark.parametrize("trainer", list(TINY_CONFIGS))
def test_predict_on_a_manifest_writes_one_row_per_video(runs, held_out, trainer, tmp_path):
    out = tmp_path / "predictions.jsonl"
    done = vtt(
        "predict", "--model", str(runs[trainer]), "--manifest", str(held_out), "--out", str(out), "--batch-size", "2"
    )
    rows = read_jsonl(out)
    assert [sorted(row) for row in rows] == [["id", "prediction", "question", "reference"]] * 3
    assert all(row["prediction"] for row in rows)
    assert f"3 prediction(s) from the {trainer} model" in done.stdout
    # Greedy decoding through the same code and batches as the evaluation at the end of training.
    assert rows == read_jsonl(runs[trainer] / "eval_predictions.jsonl")


def test_predict_one_video_with_a_question(runs, demo_inputs, tmp_path):
    video = demo_inputs["manifest"].parent / "clip003.mp4"
    out = tmp_path / "one.jsonl"
    vtt("predict", "--model", str(runs["llava"]), "--video", str(video), "--question", "which way?", "--out", str(out))
    [row] = read_jsonl(out)
    assert row["id"] == "clip003" and row["question"] == "which way?" and "reference" not in row
    assert row["prediction"]


def test_predict_without_question_for_a_video_is_an_error(runs, demo_inputs):
    video = demo_inputs["manifest"].parent / "clip003.mp4"
    done = vtt("predict", "--model", str(runs["llava"]), "--video", str(video), check=False)
    assert done.returncode == 2
    assert "--video needs --question" in done.stderr


def test_seq2seq_answers_start_with_the_forced_target_language(runs):
    """The language recorded at training (eng_Latn) is forced by default; --tgt-lang overrides it."""
    import torch

    for language in (None, "fra_Latn"):
        model = answerer(str(runs["seq2seq"]), "seq2seq", device="cpu", tgt_lang=language, max_new_tokens=4)
        inputs = model.tokenizer(["what colour is the shape"], return_tensors="pt")
        with torch.inference_mode():
            out = model.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert model.tokenizer.convert_ids_to_tokens(int(out[0, 1])) == (language or "eng_Latn")


def test_eval_prints_a_table_and_writes_json(runs, held_out, tmp_path):
    out = tmp_path / "eval.json"
    done = vtt("eval", "--model", str(runs["seq2seq"]), "--data", str(held_out), "--out", str(out))
    results = json.loads(out.read_text())
    metrics = {"bleu", "chrf", "exact_match", "prediction_words", "reference_words", "samples", "failed"}
    assert set(results["metrics"]) == metrics
    assert results["metrics"]["samples"] == 3 and results["metrics"]["failed"] == 0
    assert "bleu" in done.stdout and "chrf" in done.stdout and "exact_match" in done.stdout
    assert read_jsonl(tmp_path / "eval_predictions.jsonl")[0]["id"] == "clip000"


def test_predict_and_eval_record_a_bad_clip_and_a_bad_line_and_go_on(runs, held_out, tmp_path):
    """A clip that fails to decode and a line that is no sample get failed rows saying why; the rest is answered."""
    from videos import random_bytes

    lines = read_jsonl(held_out)
    lines[1]["video"] = str(random_bytes(tmp_path / "broken.mp4"))
    data = tmp_path / "with-bad.jsonl"
    data.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[1]) + "\n42\n" + json.dumps(lines[2]) + "\n")
    out = tmp_path / "predictions.jsonl"
    done = vtt("predict", "--model", str(runs["llava"]), "--manifest", str(data), "--out", str(out))
    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == ["clip000", "clip001", "3", "clip002"]
    assert rows[0]["prediction"] and rows[3]["prediction"]
    assert rows[1]["prediction"] is None and "broken.mp4" in rows[1]["error"]
    assert rows[2]["prediction"] is None and "where a JSON object belongs" in rows[2]["error"], rows[2]
    assert "2 sample(s) got none" in done.stdout

    results = tmp_path / "eval.json"
    vtt("eval", "--model", str(runs["llava"]), "--data", str(data), "--out", str(results))
    metrics = json.loads(results.read_text())["metrics"]
    assert metrics["samples"] == 2 and metrics["failed"] == 2


def test_eval_of_data_without_answers_names_the_sample(runs, held_out, tmp_path):
    lines = read_jsonl(held_out)
    del lines[1]["answer"]
    data = tmp_path / "no-answers.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = vtt(
        "eval", "--model", str(runs["seq2seq"]), "--data", str(data), "--out", str(tmp_path / "e.json"), check=False
    )
    assert done.returncode == 2
    assert "sample 2 (id 'clip001') has no reference" in done.stderr
    assert not (tmp_path / "e.json").exists()


def test_report_embeds_the_plots_as_png(runs, tmp_path):
    html = write_report(runs["seq2seq"], tmp_path / "report.html").read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) >= 3  # loss, learning rate, eval metrics, tokens/s
    for image in images:
        assert base64.b64decode(image.split('"', 1)[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    assert "clip000" in html and "a red square moves left" in html  # the sample predictions table
    assert '"stage": 2' in unescape(html)  # the DeepSpeed config used


def test_report_of_a_folder_without_trainer_state_is_an_error(tmp_path):
    done = vtt("report", str(tmp_path), check=False)
    assert done.returncode == 2
    assert f"{tmp_path}/trainer_state.json: no such file" in done.stderr


def screenshot(html: Path, png: Path, size: str = "1280,1600") -> Image.Image:
    """The page as Debian's Chromium renders it, headless."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for this test: apt-get install chromium (as root: make system)"
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
        flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
        flags += [f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}"]
        done = subprocess.run([chromium, *flags, html.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return Image.open(png).convert("RGB")


def test_report_shows_the_loss_curve_in_a_headless_browser(runs, tmp_path):
    report = vtt("report", str(runs["llava"]))
    html = runs["llava"] / "report.html"
    assert str(html) in report.stdout
    pixels = np.asarray(screenshot(html, tmp_path / "report.png"), dtype=int)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, "the page is blank"
    # The train-loss line is drawn in TRAIN_COLOUR: look for a line of it across the first (loss) plot,
    # which sits in the left column below the summary.
    colour = np.array([int(TRAIN_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    line = np.abs(pixels - colour).max(axis=2) < 40
    left = line[:, : pixels.shape[1] // 2]
    rows, columns = np.nonzero(left)
    assert len(rows) > 300, "no train-loss line pixels in the plot region"
    assert columns.max() - columns.min() > pixels.shape[1] // 4, "the loss line does not span the plot"
    assert rows.min() > 100, "line colour found in the header, not in a plot"
