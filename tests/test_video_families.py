"""Every vision-language family through vtt's own data path and trainer: tiny random models from `vtt tiny`
(real processor classes, chat templates and special tokens), the demo's real clips, `vtt run`, predict, eval.

The video families get each clip as a video with its real metadata; LLaVA (tests/test_llava_trainer.py)
gets frames as images. The labels cover the answer only; a rank whose clips all fail still runs the tower.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILY_CONFIGS, ROOT, SAVE_STEPS, manifest_with_broken_clips, train, twin
from transformers import AutoModelForImageTextToText, AutoProcessor

from vtt.cli import main as vtt
from vtt.data.collate import VisionCollator, sampling_for
from vtt.data.datasets import llava_dataset
from vtt.data.video import read_clip
from vtt.models.families import family_of
from vtt.models.llava import fix_processor

VIDEO_FAMILIES = ["qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video", "smolvlm"]
SETTINGS = {"num_frames": 4, "fps": 2.0, "max_frames": 6}  # fps sampling where the family takes it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Each family's tiny model as `vtt tiny` builds it, once per module."""
    base, built = tmp_path_factory.mktemp("families"), {}

    def get(family: str) -> Path:
        if family not in built:
            assert vtt(["tiny", "--family", family, "--out", str(base / family)]) == 0
            built[family] = base / family
        return built[family]

    return get


def loaded(path: Path):
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    fix_processor(processor, model.config)
    return processor, model, family_of(model.config, processor)


def visual_token_id(processor, family) -> int:
    name = "image_token_id" if family.visual_input == "images" or family.name == "smolvlm" else "video_token_id"
    return getattr(processor, name)


def row_of(clip) -> dict:
    """A training row holding `clip` as the dataset gives it to the collator."""
    return {
        "prompt": [{"role": "user", "content": [{"type": "text", "text": "what moves?"}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": "a square"}]}],
        "images": clip.frames,
        "clip": clip.timing(),
    }


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_loss_covers_only_the_answer_and_the_clip_goes_in_as_a_video(name, tiny, demo_inputs):
    processor, model, family = loaded(tiny(name))
    assert family.visual_input == "video"
    data = llava_dataset(demo_inputs["manifest"], sampling_for(processor, family, SETTINGS), None, 1.0,
                         family.fixed_frames)  # fmt: skip
    rows = [data[0], data[1]]
    rows[1]["completion"][0]["content"][0]["text"] += " and then it stops"  # one row carries padding
    batch = VisionCollator(processor, family, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert "pixel_values_videos" in batch or name == "smolvlm"  # SmolVLM's frames travel as its images
    token = visual_token_id(processor, family)
    for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"], strict=True):
        kept = labels[labels != -100]
        assert (ids == token).sum() > 0 and not (kept == token).any()
        answer = row["completion"][0]["content"][0]["text"]
        assert processor.tokenizer.decode(kept, skip_special_tokens=True).strip() == answer
        assert processor.tokenizer.eos_token_id in kept.tolist(), "the answer teaches the model to stop"
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


def clips_of_four_lengths(tiny, tmp_path):
    """Qwen2.5-VL, a manifest of four 12 fps clips of 1-6 s (the longer, the more frames at fps 2), its
    sampling, and a visual-token cap that the two shorter clips fit and the two longer do not."""
    from vtt.data.budget import VisualBudget
    from vtt.data.synthetic import write_video

    processor, _, family = loaded(tiny("qwen2_5_vl"))
    lines = []
    for i, seconds in enumerate((1, 2, 4, 6)):
        write_video(tmp_path / f"c{i}.mp4", "red", "left", frames=12 * seconds)
        lines.append({"video": f"c{i}.mp4", "question": "what moves?", "answer": "a square", "id": f"c{i}"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sampling = sampling_for(processor, family, {"fps": 2.0, "max_frames": 16})
    counted = VisualBudget(processor, family, sampling)
    llava_dataset(manifest, sampling, budget=counted)
    return processor, family, manifest, sampling, sorted(counted.counts)[1]


def test_a_clip_over_max_visual_tokens_is_left_out_at_load_with_the_frames_that_fit(tiny, tmp_path):
    from vtt.data.budget import VisualBudget

    processor, family, manifest, sampling, cap = clips_of_four_lengths(tiny, tmp_path)
    rejects = tmp_path / "rejects.jsonl"
    data = llava_dataset(manifest, sampling, rejects, budget=VisualBudget(processor, family, sampling, cap))
    over = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(data) == 2 and sorted(r["id"] for r in over) == ["c2", "c3"]
    assert all(f"over max_visual_tokens={cap}" in r["reason"] and "frames fit" in r["reason"] for r in over)
    batch = VisionCollator(processor, family)([data[0], data[1]])
    assert all(0 < (ids == processor.video_token_id).sum() <= cap for ids in batch["input_ids"])


def test_qwen2_5_vl_takes_whole_temporal_patches_spaced_by_the_real_sampled_rate(tiny, demo_inputs):
    processor, _, family = loaded(tiny("qwen2_5_vl"))
    clip_path = sorted(demo_inputs["manifest"].parent.glob("*.mp4"))[0]
    sampling = sampling_for(processor, family, {"num_frames": 5})
    clip = read_clip(clip_path, sampling)
    assert len(clip.frames) == 4, "5 frames asked: sampled as two whole temporal patches"
    row = row_of(clip)
    features = VisionCollator(processor, family).row(row)
    assert features["video_grid_thw"][0, 0] == 2  # 4 frames, no repeated frame
    sampled_rate = len(clip.times) / clip.duration
    assert features["second_per_grid_ts"][0] == pytest.approx(2 / sampled_rate, rel=0.05)


def test_qwen3_vl_writes_the_frames_real_times_into_the_prompt(tiny, demo_inputs):
    processor, _, family = loaded(tiny("qwen3_vl"))
    clip_path = sorted(demo_inputs["manifest"].parent.glob("*.mp4"))[0]
    clip = read_clip(clip_path, sampling_for(processor, family, {"fps": 2.0, "max_frames": 6}))
    row = row_of(clip)
    text = processor.tokenizer.decode(VisionCollator(processor, family).row(row)["input_ids"][0])
    written = [float(t) for t in re.findall(r"<([0-9.]+) seconds>", text)]
    pairs = [(clip.times[i] + clip.times[i + 1]) / 2 for i in range(0, len(clip.times), 2)]
    assert written == pytest.approx(pairs, abs=0.06), "each temporal patch's time is its frames' mean time"


@pytest.mark.slow
@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_every_family_trains_saves_predicts_evaluates_reports_and_pushes(name, tiny, demo_inputs, held_out, tmp_path):
    """Its shipped run config (jobs/, tiny-llava.yaml for LLaVA-NeXT-Video) as a tiny twin on its tiny model:
    the config's own sampling, pixel budget, DeepSpeed file and save path; a checkpoint, the final model,
    predictions and metrics on held-out clips, `vtt report`, and `vtt push` to a stand-in Hub with the
    family's processor files beside the weights."""
    out = tmp_path / "run"
    config = ROOT / "jobs" / FAMILY_CONFIGS.get(name, "tiny-llava.yaml")
    overrides = twin(config, demo_inputs, out, steps=3, model=tiny(name))
    overrides += ["--report_to", "none", "--eval_dataset", str(held_out), "--generate_eval", "true"]
    if name not in FAMILY_CONFIGS:
        overrides += ["--fps", "2", "--max_frames", "6"]
    train(str(config.relative_to(ROOT)), 1, overrides)
    assert (out / f"checkpoint-{SAVE_STEPS}" / "vtt-checkpoint.json").is_file()
    record = json.loads((out / "vtt-run.json").read_text())
    assert (record["family"], record["visual_input"]) == (name, "video")
    counted = record["visual_tokens_per_sample"]
    clips = len(demo_inputs["manifest"].read_text().splitlines())
    assert counted["n"] == clips and 0 < counted["mean"] <= counted["max"]
    assert AutoModelForImageTextToText.from_pretrained(out).config.model_type == name
    assert type(AutoProcessor.from_pretrained(out)) is type(AutoProcessor.from_pretrained(tiny(name)))
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3 and all(isinstance(row["prediction"], str) for row in predictions)
    metrics = json.loads((out / "eval_generation.json").read_text())["metrics"]
    assert (metrics["samples"], metrics["failed"]) == (3, 0)
    assert vtt(["report", str(out)]) == 0 and "<img" in (out / "report.html").read_text()
    from fake_hub import FakeHub
    from test_hub import TOKEN, hub_env
    from test_hub import vtt as vtt_command

    with FakeHub(TOKEN) as hub:
        pushed = vtt_command(["push", str(out), "--repo-id", f"tiny-{name}"], hub_env(hub, tmp_path))
    assert pushed.returncode == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
    uploaded = set(hub.files[f"model:tester/tiny-{name}"])
    assert {"config.json", "model.safetensors", "README.md"} <= uploaded
    saved = {path.name for path in out.iterdir() if path.is_file() and path.suffix in (".json", ".jinja", ".txt")}
    processor_files = {f for f in saved if "processor" in f or "tokenizer" in f or "chat_template" in f}
    assert processor_files and processor_files <= uploaded, "the processor travels with the model"


@pytest.mark.slow
def test_a_rank_whose_clips_all_fail_does_not_hang_zero3(tiny, demo_inputs, tmp_path):
    """Rank 1's sample and the 16 after it are unreadable: it trains on a stand-in clip without labels, so
    both ranks run the vision tower and ZeRO-3's parameter gathers match; the run ends instead of hanging.
    Sequential sampling at micro batch 1 on 2 ranks: rank 0 reads line 1 (a clip), rank 1 line 2 (not)."""
    count = 1 + 17
    manifest, rows = manifest_with_broken_clips(demo_inputs, tmp_path, broken=0)
    good = rows[0]
    lines = [good] + [{**rows[1], "video": f"bad{i}.mp4", "id": f"bad-{i}"} for i in range(count - 1)]
    for line in lines[1:]:
        (tmp_path / line["video"]).write_bytes(bytes(range(256)) * 8)  # a real file, no video
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vtt.cli", "run", "--config", "jobs/tiny-llava.yaml", "--gpus", "2",
               "--model_name_or_path", str(tiny("qwen2_5_vl")), "--dataset", str(manifest),
               "--deepspeed", "deepspeed/zero3.json", "--per_device_train_batch_size", "1",
               "--global_batch_size", "2", "--max_steps", "1", "--max_reject_ratio", "1.0",
               "--train_sampling_strategy", "sequential",
               "--output_dir", str(out), "--report_to", "none"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(out.glob("model*.safetensors")), "the run ended and saved"
    rejected = {json.loads(line)["id"] for line in (out / "rejects.jsonl").read_text().splitlines()}
    assert {f"bad-{i}" for i in range(16)} <= rejected, "rank 1's clip and the 16 tried after it were reported"


def test_with_fit_visual_tokens_a_clip_over_the_cap_trains_at_the_frames_that_fit(tiny, tmp_path):
    """The same clips as above: the two over the cap are kept, sampled over their whole length at the most
    frames that fit, and their rows hold exactly the visual tokens predicted for those frames."""
    from vtt.data.budget import VisualBudget

    processor, family, manifest, sampling, cap = clips_of_four_lengths(tiny, tmp_path)
    rejects = tmp_path / "rejects.jsonl"
    budget = VisualBudget(processor, family, sampling, cap, resample=True)
    data = llava_dataset(manifest, sampling, rejects, budget=budget)
    assert len(data) == 4 and not rejects.exists()
    assert sorted(budget.fitted) == [3, 4]  # manifest lines of c2 and c3
    collate = VisionCollator(processor, family)
    for i in range(4):
        row = data[i]
        ids = collate.row(row)["input_ids"][0]
        tokens = int((ids == processor.video_token_id).sum())
        assert tokens <= cap and tokens == budget.counts[i]
        assert row["clip"]["times"][-1] > 0.6 * row["clip"]["duration"], "the frames still span the clip"


def test_prepare_gives_a_fixed_frame_family_num_frames_from_every_clip(tiny, demo_inputs, tmp_path):
    """LLaVA-OneVision stacks a batch's clips, so each needs num_frames: the demo's 24-frame clips asked for
    32 come out of vtt prepare with 32 (frames repeated evenly), as the trainer's own decoding gives them."""
    from datasets import load_from_disk

    out = tmp_path / "prepared"
    model = str(tiny("llava_onevision"))
    args = ["--manifest", str(demo_inputs["manifest"]), "--out", str(out), "--trainer", "llava", "--frames", "32"]
    assert vtt(["prepare", *args, "--workers", "1", "--model", model]) == 0
    data = load_from_disk(str(out))
    assert len(data) == 8 and all(len(row["images"]) == 32 == len(row["clip"]["times"]) for row in data)
    processor, _, family = loaded(tiny("llava_onevision"))
    batch = VisionCollator(processor, family)([data[0], data[1]])  # stacks: equal frame counts
    assert batch["pixel_values_videos"].shape[:2] == (2, 32)
