"""Visual tokens known before decoding: for every family, the count predicted from a clip's container
(vtt.data.budget) equals the processor's real count on the clip as the trainer decodes and collates it."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from videos import ffmpeg, pattern_clip, rotated

from vtt.data.budget import distribution, frames_that_fit, predicted_tokens, probe
from vtt.data.collate import VisionCollator, sampling_for
from vtt.data.datasets import repeated_to
from vtt.data.readers import resize, resized
from vtt.data.video import read_clip
from vtt.models.families import FAMILIES, set_pixel_budget
from vtt.models.tiny_video import FAMILIES as TINY
from vtt.models.visual_tokens import placeholder_id, visual_tokens

# (name, width x height, seconds, rate): odd and lopsided sizes, 1-6 s, 8-30 fps, one shorter than 5 frames.
CLIPS = [
    ("wide", "64x48", 2, 8),
    ("tall", "48x80", 1, 30),
    ("strip", "200x30", 6, 12),
    ("odd", "33x17", 3, 25),
    ("short", "40x40", 0.5, 8),
]
# uniform num_frames, and fps with a frame cap (families that stack clips take num_frames whatever fps says).
SETTINGS = [{"num_frames": 5}, {"num_frames": 3, "fps": 3, "max_frames": 7}, {"num_frames": 8, "fps": 10}]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for name, size, seconds, rate in CLIPS:
        width, height = size.split("x")
        codec = ["-vf", f"scale={width}:{height}", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-g", "6"]
        made[name] = pattern_clip(folder / f"{name}.mp4", codec, seconds=seconds, rate=rate, size="64x64")
    made["turned"] = rotated(made["wide"], folder / "turned.mp4", 90)
    return made


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoConfig, AutoProcessor

    from vtt.models.llava import fix_processor
    from vtt.models.tiny_video import build_tiny_vlm

    built = {}
    for family in TINY:
        path = build_tiny_vlm(family, tmp_path_factory.mktemp(family))
        processor, config = AutoProcessor.from_pretrained(path), AutoConfig.from_pretrained(path)
        fix_processor(processor, config)  # as the trainer loads it
        built[family] = (processor, config)
        built[f"{family} path"] = path
    return built


def real_tokens(processor, family, path, sampling) -> int:
    """The family's placeholder tokens in the row the trainer's collator builds from the decoded clip."""
    clip = read_clip(path, sampling)
    if family.fixed_frames:
        clip = repeated_to(clip, sampling.num_frames)
    row = {
        "prompt": [{"role": "user", "content": [{"type": "text", "text": "what moves"}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": "a square"}]}],
        "images": clip.frames,
        "clip": clip.timing(),
    }
    ids = VisionCollator(processor, family).row(row)["input_ids"]
    return int((ids == placeholder_id(processor, family)).sum())


@pytest.mark.parametrize("name", TINY)
def test_visual_tokens_predicted_from_the_container_equal_the_processors_count(name, models, clips):
    processor, _ = models[name]
    family = FAMILIES[name]
    started, checked = time.monotonic(), []
    for settings in SETTINGS:
        sampling = sampling_for(processor, family, settings)
        for clip, path in clips.items():
            predicted = predicted_tokens(path, sampling, processor, family)
            real = real_tokens(processor, family, path, sampling)
            checked.append((clip, settings, predicted, real))
    wrong = [c for c in checked if c[2] != c[3]]
    assert not wrong, f"{name}: (clip, settings, predicted, real) that differ: {wrong}"
    if not family.fixed_frames:  # the clips' lengths (and, for Qwen-VL, sizes) give different counts
        assert len({c[2] for c in checked}) > 1
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_visual_tokens_follow_the_run_pixel_budget_and_the_per_frame_cap(name, models, clips):
    """A run's min/max_pixels, and Qwen2.5-VL's per-frame cap of a total token budget (which its video
    processor's own patch count leaves out), give the counts the processor gives."""
    import copy

    processor = copy.deepcopy(models[name][0])
    family = FAMILIES[name]
    set_pixel_budget(processor, 8 * 8, 24 * 24)
    if name == "qwen2_5_vl":
        processor.video_processor.max_video_tokens = 20  # 0.9 * 20 tokens of 16x16 px over the frames
    else:
        processor.video_processor.cap_pixels_per_frame = True
        processor.video_processor.max_video_tokens = 2
    for settings in SETTINGS:
        sampling = sampling_for(processor, family, settings)
        for path in clips.values():
            assert predicted_tokens(path, sampling, processor, family) == real_tokens(
                processor, family, path, sampling
            ), (path.name, settings)


def test_visual_tokens_probe_reads_the_container_and_turns_a_rotated_clip(clips):
    assert probe(clips["odd"]) == (33, 17, 25.0, 3.0)
    assert probe(clips["strip"])[:2] == (200, 30)
    assert probe(clips["turned"]) == (48, 64, 8.0, 2.0)  # displayed upright: 90 degrees turn 64x48 to 48x64


@pytest.mark.parametrize("size", [None, 32, 128, 384, (32, 32), (48, 20)])
def test_visual_tokens_resized_is_the_readers_resize(size):
    for width, height in [(64, 48), (33, 17), (200, 30), (17, 33), (1920, 1080), (1, 640), (640, 1)]:
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        out = resize(frame, size)
        assert resized(width, height, size) == (out.shape[1], out.shape[0]), (width, height, size)


def test_visual_tokens_fit_and_distribution(models, clips):
    processor, _ = models["qwen2_5_vl"]
    family = FAMILIES["qwen2_5_vl"]
    sampling = sampling_for(processor, family, {"fps": 10, "max_frames": 60})
    info = probe(clips["strip"])
    tokens = predicted_tokens(clips["strip"], sampling, processor, family)
    fit = frames_that_fit(info, sampling, processor, family, tokens // 3)
    assert fit % 2 == 0 and 0 < fit < 60
    shorter = dataclasses.replace(sampling, max_frames=fit)
    assert predicted_tokens(clips["strip"], shorter, processor, family) <= tokens // 3
    assert frames_that_fit(info, sampling, processor, family, 0) == 0
    assert distribution([10, 20, 30, 40]) == {"n": 4, "min": 10, "p50": 25, "p90": 37, "p99": 39, "mean": 25.0,
                                               "max": 40}  # fmt: skip
    assert distribution([])["n"] == 0


def test_visual_tokens_refuse_an_empty_clip(models):
    processor, _ = models["smolvlm"]
    with pytest.raises(ValueError, match="no visual tokens"):
        visual_tokens(processor, FAMILIES["smolvlm"], 0, 32, 32)


def test_visual_tokens_of_an_unknown_family_are_the_processors_own_count(models):
    """A family outside the table is counted by its processor on a blank clip of the size (exact)."""
    processor, _ = models["llava_next_video"]
    known = FAMILIES["llava_next_video"]
    unknown = dataclasses.replace(known, name="someone_else")
    for frames, height, width in [(1, 32, 32), (4, 17, 33), (7, 80, 48)]:
        assert visual_tokens(processor, unknown, frames, height, width) == visual_tokens(
            processor, known, frames, height, width
        )


def test_visual_tokens_a_probe_of_a_file_that_is_not_a_video_is_a_video_error(tmp_path):
    from vtt.data.readers import VideoError

    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(VideoError, match=r"text\.mp4"):
        probe(tmp_path / "text.mp4")
    ffmpeg("-f", "lavfi", "-i", "anullsrc", "-t", "1", str(tmp_path / "sound.m4a"))
    with pytest.raises(VideoError, match="no video stream"):
        probe(tmp_path / "sound.m4a")


def test_visual_tokens_vtt_check_data_prints_the_distribution_and_names_samples_over_budget(
    models, clips, tmp_path, capsys
):
    from vtt.cli import main

    manifest = tmp_path / "manifest.jsonl"
    names = ["wide", "strip", "odd"]
    manifest.write_text("".join(f'{{"video": "{clips[n]}", "question": "q", "answer": "a"}}\n' for n in names))
    model = str(models["qwen2_5_vl path"])
    common = ["check", "--config", "jobs/tiny-llava.yaml", "--data", str(manifest), "--model_name_or_path", model]
    common += ["--fps", "2", "--max_pixels", "1024", "--max_reject_ratio", "0.5"]
    processor = models["qwen2_5_vl"][0]
    import copy

    processor = copy.deepcopy(processor)
    set_pixel_budget(processor, None, 1024)
    sampling = sampling_for(processor, FAMILIES["qwen2_5_vl"], {"fps": 2, "num_frames": 4})
    counts = [predicted_tokens(clips[n], sampling, processor, FAMILIES["qwen2_5_vl"]) for n in names]
    assert main([*common, "--max_visual_tokens", str(max(counts))]) == 0
    out = capsys.readouterr().out
    assert f"min={min(counts)}" in out and f"max={max(counts)}; max_visual_tokens={max(counts)}" in out
    assert "0 of 3 samples would be left out" in out
    budget = sorted(counts)[1]  # the longest clip is over: within the ratio, so exit 0 with it named
    assert main([*common, "--max_visual_tokens", str(budget)]) == 0
    out = capsys.readouterr().out
    assert (
        f"line 2: {clips['strip']}: {max(counts)} visual tokens (12 frames) is over max_visual_tokens={budget}" in out
    )
    assert "frames fit: sample fewer frames (fps/max_frames) or lower max_pixels" in out
    assert main([*common, "--max_visual_tokens", "1"]) == 2  # every sample over: the run would stop
    assert "is over max_reject_ratio 50.0%: exit 2" in capsys.readouterr().out
    # max_length counts the whole row (its text and template too): the fewest visual tokens + 1 leaves no room
    assert main([*common, "--max_length", str(min(counts) + 1)]) == 2
    out = capsys.readouterr().out
    assert out.count(f"the rest text) are over max_length={min(counts) + 1}") == 3 and "raise max_length" in out
    assert main([*common, "--max_length", "100000"]) == 0
    assert "0 of 3 samples would be left out" in capsys.readouterr().out
