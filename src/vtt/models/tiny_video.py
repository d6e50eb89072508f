"""Tiny random video-language models, one per family, with the family's real processor classes, chat template
and special tokens (no download): `vtt tiny --family F --out DIR [--seed N]` builds one, the tests use them.

    from vtt.models.tiny_video import build_tiny_vlm
    build_tiny_vlm("qwen2_5_vl", "outputs/tiny-qwen2_5_vl")   # loads with AutoProcessor / AutoModelForImageTextToText

Each is built from its config (text: hidden 64, 2 layers; vision: 2 layers, patches of 8, so a 64x48 frame
gives a few tokens), a byte-level BPE tokenizer trained on the demo words (models.tiny), and saved with
save_pretrained, generation_config's pad/eos set. The chat templates are the hub's (tiny_templates.py).

What each family's processor does with a clip of T frames of HxW (transformers 5.24; frames passed as a list
of HxWx3 arrays with `do_sample_frames=False` and `video_metadata=[VideoMetadata(fps=, frames_indices=,
duration=)]`; every formula below checked against the processor's count for T = 1..16 and frames from 30x200
to 480x640). Every video processor needs torchvision; SmolVLM's processor also needs num2words.

- qwen2_5_vl: Qwen2_5_VLProcessor + Qwen2VLImageProcessor + Qwen2VLVideoProcessor. Per-frame pixel budget:
  `min_pixels` / `max_pixels` (init or call kwargs; saved as size {"shortest_edge", "longest_edge"}); real
  class defaults 128*28*28 / 768*28*28, patch 14, merge 2 (factor f = 28; here 8, 2, f = 16). Each frame is
  smart_resized: H', W' = round(H/f)*f, round(W/f)*f, scaled by sqrt(HW/max) (floor) or sqrt(min/HW) (ceil)
  when outside [min, max]. With `cap_pixels_per_frame=True` (qwen-vl-utils' behaviour; unset, transformers
  warns and keeps no total cap) max becomes max(min(max, int(0.9*max_video_tokens*f*f) * 2 // T), 1.05*min).
  temporal_patch_size 2: odd T is padded by repeating the last frame. video_grid_thw = (ceil(T/2), H'/14,
  W'/14); tokens = ceil(T/2) * H'W' / (patch*merge)**2, each `<|video_pad|>`, inside the template's one
  `<|vision_start|>...<|vision_end|>`. fps (call kwarg or metadata) only sets second_per_grid_ts = 2/fps,
  the model's time positions (vision tokens_per_second), not the count.
- qwen3_vl: Qwen3VLProcessor + Qwen2VLImageProcessor + Qwen3VLVideoProcessor. The budget is on the whole
  clip: size {"shortest_edge", "longest_edge"} = min / max of T'*H'*W' with T' = round(T/2)*2 (class defaults
  128*32*32 / 768*32*32, patch 16, merge 2, f = 32); H', W' as above but beta = sqrt(T*H*W / max).
  `cap_pixels_per_frame=True` makes max = T * max(min(max_video_tokens*f*f, longest_edge // T),
  1.05*shortest_edge). Tokens = ceil(T/2) * H'W' / (patch*merge)**2 `<|video_pad|>`, written per temporal
  patch as "<t seconds><|vision_start|><|video_pad|>*n<|vision_end|>" (t: mean time of the patch's frames
  from metadata frames_indices / fps, "%.1f"), all inside the template's own vision_start/end (nested, as
  upstream). Without metadata fps it warns and assumes 24 fps. A 1-frame clip is refused (T < 2).
- llava_onevision: LlavaOnevisionProcessor + LlavaOnevisionImageProcessor + LlavaOnevisionVideoProcessor.
  Frames are resized to size {"height", "width"} (384 real, 32 here), aspect not kept, no pixel budget, no
  temporal patch: n = size/patch features a side (27 real: SigLIP-so400m/14), pooled 2x2 (ceil), one
  newline per video: tokens = T * ceil(n/2)**2 + 1 `<video>` (real: 196*T + 1). The processor's
  num_image_tokens (n*n) is what it counts with.
- llava_next_video: LlavaNextVideoProcessor + LlavaNextImageProcessor + LlavaNextVideoVideoProcessor. Frames
  resized to size {"shortest_edge"} then center-cropped to crop_size (336 real, CLIP-L/14; 32 here): tokens =
  T * (crop/patch)**2 // 4 `<video>` (real: 144*T); the processor's //4 is fixed, whatever the model's
  spatial_pool_stride (2). Its patch_size must be set on the processor (it is here).
- smolvlm (SmolVLM2): SmolVLMProcessor + SmolVLMImageProcessor + SmolVLMVideoProcessor. Every frame becomes
  one square image of max_image_size {"longest_edge"} (364 real, 32 here; no splitting for video), of
  image_seq_len = (size/patch)**2 / scale_factor**2 `<image>` tokens (real: 64). Budget: frames only (the
  video processor's video_sampling {"fps", "max_frames", "video_size"} applies when it samples itself).
  The template's `<video>` becomes "You are provided the following series of {T in words} frames from a
  {H:MM:SS} [H:MM:SS] video.\n" + per frame "\nFrame from MM:SS:<fake_token_around_image><global-img>"
  + `<image>`*image_seq_len + "<fake_token_around_image>", then "\n\n" (times from metadata; duration from
  metadata.duration). Tokens `<image>` = T * image_seq_len; the text around them also grows with T (~10
  text tokens a frame). Call it with return_tensors="pt": with lists it fails (pixel_values.shape).
- llava: models.tiny.build_tiny_llava (frames as images through LlavaProcessor, no video processor).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextImageProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from vtt.models import tiny_templates as templates
from vtt.models.tiny import LLAVA_TEXT, build_tiny_llava, byte_bpe_tokenizer
from vtt.outputs import claim_output

FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video", "smolvlm")
RECORD = "vtt-tiny.json"  # written into every built model: what `vtt tiny` may replace
TEXT = LLAVA_TEXT["tiny"]  # hidden 64, 2 layers, 4 heads (head_dim 16), 2 kv heads
FRAME = (48, 64)  # the frame (height, width) the tiny budgets are sized for
QWEN_SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>", "<|endoftext|>"]  # fmt: skip
QWEN_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}  # fmt: skip


def _qwen_tokenizer(template: str):
    return byte_bpe_tokenizer(QWEN_SPECIAL, "<|im_end|>", template, QWEN_NAMED)


def _qwen_ids(tok) -> dict[str, int]:
    ids = {n: tok.convert_tokens_to_ids(QWEN_NAMED[n.replace("_id", "")]) for n in ("image_token_id", "video_token_id")}
    ids["vision_start_token_id"] = tok.convert_tokens_to_ids("<|vision_start|>")
    ids["vision_end_token_id"] = tok.convert_tokens_to_ids("<|vision_end|>")
    return ids


def _text(tok, **extra) -> dict:
    return {**TEXT, "vocab_size": len(tok), "max_position_embeddings": 4096, "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id, "bos_token_id": None, **extra}  # fmt: skip


def _qwen2_5_vl(seed: int):
    tok = _qwen_tokenizer(templates.QWEN2_5_VL)
    patch, merge = 8, 2
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"],
                  window_size=32, fullatt_block_indexes=[1], tokens_per_second=2)  # fmt: skip
    config = Qwen2_5_VLConfig(text_config=_text(tok, rope_parameters=rope), vision_config=vision, **_qwen_ids(tok))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    pixels = dict(patch_size=patch, merge_size=merge, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=64 * 64)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True, max_video_tokens=4096),
        tokenizer=tok,
        chat_template=templates.QWEN2_5_VL,
    )
    return model, processor


def _qwen3_vl(seed: int):
    tok = _qwen_tokenizer(templates.QWEN3_VL)
    patch, merge = 8, 2
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"],
                  num_position_embeddings=64, deepstack_visual_indexes=[0])  # fmt: skip
    text = _text(tok, rope_parameters=rope, head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tok))
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    common = dict(patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common, min_pixels=16 * 16, max_pixels=64 * 64),
        # Qwen3-VL's video budget is on the whole clip (T * H * W), here up to 16 frames of 64x64.
        video_processor=Qwen3VLVideoProcessor(**common, size={"shortest_edge": 512, "longest_edge": 64 * 64 * 16}),
        tokenizer=tok,
        chat_template=templates.QWEN3_VL,
    )
    return model, processor


# LLaVA towers: 32x32 frames in patches of 8 = 16 features a frame (CLIP adds a CLS the "default" strategy drops).
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
             patch_size=8)  # fmt: skip
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
CLIP_NORM = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])


def _llava_onevision(seed: int):
    special = ["<pad>", "<unk>", "<image>", "<video>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tok = byte_bpe_tokenizer(special, "<|im_end|>", templates.LLAVA_ONEVISION,
                             {"image_token": "<image>", "video_token": "<video>"})  # fmt: skip
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**TOWER),
        text_config=Qwen2Config(**_text(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    norm = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS, **norm
        ),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32}, **norm),
        tokenizer=tok,
        num_image_tokens=(32 // 8) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=templates.LLAVA_ONEVISION,
    )
    return model, processor


def _llava_next_video(seed: int):
    special = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<video>"]
    tok = byte_bpe_tokenizer(special, "</s>", templates.LLAVA_NEXT_VIDEO,
                             {"image_token": "<image>", "video_token": "<video>"}, bos_token="<s>")  # fmt: skip
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(**TOWER, projection_dim=32),
        text_config=LlamaConfig(**_text(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=PINPOINTS,
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        image_seq_length=(32 // 8) ** 2,
        video_seq_length=(32 // 8) ** 2 // 4,
    )
    torch.manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(config)
    crop = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **CLIP_NORM)
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(**crop),
        image_processor=LlavaNextImageProcessor(**crop, image_grid_pinpoints=PINPOINTS),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=templates.LLAVA_NEXT_VIDEO,
    )
    return model, processor


def _smolvlm(seed: int):
    grid = [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]  # image splitting: up to 2x2 tiles of 32
    special = ["<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
               "<image>", "<video>", *grid]  # fmt: skip
    named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}  # fmt: skip
    tok = byte_bpe_tokenizer(special, "<end_of_utterance>", templates.SMOLVLM2, named, bos_token="<|im_start|>")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    scale = 2
    config = SmolVLMConfig(
        vision_config=vision,
        text_config=_text(tok, model_type="llama"),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    norm = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3, max_image_size={"longest_edge": 32})
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size={"longest_edge": 64}, do_image_splitting=True, **norm),
        video_processor=SmolVLMVideoProcessor(
            video_sampling={"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 32}}, **norm
        ),
        tokenizer=tok,
        image_seq_len=(32 // 8) ** 2 // scale**2,
        chat_template=templates.SMOLVLM2,
    )
    return model, processor


BUILDERS = {
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "llava_onevision": _llava_onevision,
    "llava_next_video": _llava_next_video,
    "smolvlm": _smolvlm,
}


def build_tiny_vlm(family: str, out: str | Path, seed: int = 0) -> Path:
    """A tiny random model of `family` (FAMILIES) and its real processor, saved to `out`; returns `out`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    out = Path(out)
    if family == "llava":
        build_tiny_llava(out, seed=seed)
    else:
        model, processor = BUILDERS[family](seed)
        tok = processor.tokenizer
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(out)
        processor.save_pretrained(out)
    (out / RECORD).write_text(json.dumps({"family": family, "seed": seed}) + "\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, help=f"one of: {', '.join(FAMILIES)}")
    parser.add_argument(
        "--out", type=Path, required=True, help="the folder to write (an earlier `vtt tiny` one is replaced)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    if args.family not in FAMILIES:
        raise ValueError(f"--family {args.family}: unknown; one of {', '.join(FAMILIES)}")
    with claim_output(args.out, "tiny") as claim:
        staging = claim.staging()
        build_tiny_vlm(args.family, staging, seed=args.seed)
        out = claim.publish(staging)
    print(f"vtt tiny: {args.family} (seed {args.seed}) -> {out}")
    return 0
