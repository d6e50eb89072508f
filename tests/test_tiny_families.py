"""Every tiny family (vtt.models.tiny_video) loads back through the Auto classes with its real processor, renders
a video turn with its own template, counts its video tokens as its model consumes them, and trains (loss, grads).
`vtt tiny` builds one, refuses an unknown family (exit 2) and a folder it did not write."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.video_utils import VideoMetadata

from vtt.cli import main
from vtt.models.tiny_video import FAMILIES, FRAME, build_tiny_vlm

FRAMES = 4
# family -> (processor, video processor, the token the model fills with video features, its count for 4 frames
# of 64x48: the formulas of tiny_video's docstring with the tiny dims)
EXPECTED = {
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", "<|video_pad|>", 2 * 6 * 8 // 4),  # T/2*h*w/4
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor", "<|video_pad|>", 2 * 6 * 8 // 4),
    # 32x32 frames, patch 8: 4x4 features pooled to 2x2 a frame, + 1 newline a video
    "llava_onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor", "<video>", 4 * 2 * 2 + 1),
    "llava_next_video": ("LlavaNextVideoProcessor", "LlavaNextVideoVideoProcessor", "<video>", 4 * 2 * 2),
    # each frame one 32x32 image of (32/8)**2 / scale_factor**2 tokens
    "smolvlm": ("SmolVLMProcessor", "SmolVLMVideoProcessor", "<image>", 4 * 4),
}
VIDEO_PLACEHOLDER = {"smolvlm": "<video>"}  # where the template's placeholder is not the token the model fills
VIDEO_FAMILIES = [f for f in FAMILIES if f in EXPECTED]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each family built once for the module: family -> (processor, model)."""
    base = tmp_path_factory.mktemp("tiny")
    cache = {}

    def get(family):
        if family not in cache:
            out = build_tiny_vlm(family, base / family)
            cache[family] = AutoProcessor.from_pretrained(out), AutoModelForImageTextToText.from_pretrained(out)
        return cache[family]

    return get


def conversation(answer="a red ball"):
    user = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what is in the video"}]}
    return [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def clip():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(FRAMES)]
    metadata = VideoMetadata(
        total_num_frames=FRAMES, fps=2.0, frames_indices=list(range(FRAMES)), width=FRAME[1], height=FRAME[0],
        duration=FRAMES / 2.0,
    )  # fmt: skip
    return frames, metadata


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_family_loads_renders_counts_and_trains(family, built):
    processor, model = built(family)
    processor_class, video_processor_class, video_token, tokens = EXPECTED[family]
    assert type(processor).__name__ == processor_class
    assert type(processor.video_processor).__name__ == video_processor_class

    text = processor.apply_chat_template(conversation(), tokenize=False)
    assert "a red ball" in text and text.count(VIDEO_PLACEHOLDER.get(family, video_token)) == 1, text

    frames, metadata = clip()
    batch = processor(
        text=[text], videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt"
    )
    video_id = processor.tokenizer.convert_tokens_to_ids(video_token)
    assert int((batch["input_ids"] == video_id).sum()) == tokens

    # The forward pass checks the features against the video tokens ("do not match" otherwise).
    output = model(**batch, labels=batch["input_ids"].clone())
    assert torch.isfinite(output.loss)
    output.loss.backward()
    # Gradients reach the vision tower through the video features (a few of its parameters may be unused:
    # a pooling head, the layer after vision_feature_layer).
    grads = {name: p.grad for name, p in model.named_parameters()}
    vision = [g for name, g in grads.items() if "vision" in name or "visual" in name]
    assert vision and any(g is not None and float(g.abs().sum()) > 0 for g in vision)
    assert sum(g is not None for g in grads.values()) > len(grads) * 0.6
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id
    model.zero_grad()


def test_llava_family_is_the_frames_as_images_model(tmp_path):
    out = build_tiny_vlm("llava", tmp_path / "llava")
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "LlavaProcessor"


def test_vtt_tiny_builds_rebuilds_and_refuses(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["tiny", "--family", "qwen2_5_vl", "--out", str(out)]) == 0
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "Qwen2_5_VLProcessor"
    assert main(["tiny", "--family", "qwen2_5_vl", "--out", str(out), "--seed", "1"]) == 0  # its own: replaced

    assert main(["tiny", "--family", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "qwen2_5_vl" in capsys.readouterr().err and not (tmp_path / "x").exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["tiny", "--family", "qwen2_5_vl", "--out", str(foreign)]) == 2
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
