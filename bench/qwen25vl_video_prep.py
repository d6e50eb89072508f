# Copied unchanged below this header from ../shared/bench/peer-llamafactory/qwen25vl-video/prep.py (the peer's
# recipe, 2026-12-02), so that vtt's bench builds exactly the clips, rows and random-weight model folder the
# LLaMA-Factory figures were taken on. bench/train_throughput.py --arch qwen2_5_vl-7b imports it. Not vtt code:
# ruff: noqa
# fmt: off
"""Data and model for LLaMA-Factory 0.9.5 on Qwen2.5-VL video (random weights, no hub).

  python prep.py clips --out DIR [--clips 24 --samples 144 --min-s 2 --max-s 60 --size 640x360]
      synthetic clips of varied length (OpenCV, mp4v), durations spread uniformly from min-s to max-s,
      fps alternating 24 / 30; a sharegpt dataset (dataset_info.json + train.json, `lfq_video`):
      user = "<video>" + 12-word question, assistant = 20-60-word answer. Video paths relative to DIR.
  python prep.py model --size 7b|3b|tiny --out DIR
      Qwen2_5_VLForConditionalGeneration with random weights (on the GPU when there is one, bf16),
      a byte-level BPE tokenizer trained here with Qwen's special tokens, the config's token ids set
      to that tokenizer's, Qwen2VLImageProcessor / Qwen2VLVideoProcessor with the hub model's pixel
      range (min 3136, max 12845056), saved as one model folder.
"""

import argparse
import json
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np

WORDS = (
    "a about above across after again against all almost along also always among an and animal another any "
    "appear area arm around as ask at away back ball be bear became because become bed been before began begin "
    "behind being below best better between big bird black blue boat body book both bottom box boy bright bring "
    "brown build but by call came can car carry cat center change child circle city clear close cloud colour come "
    "corner could count cover cross cup dark day deep did different direction do does dog door down draw during "
    "each early earth edge end enough even every eye face fall far fast field fill find fire first fish five floor "
    "fly follow food for form four from front full game gave get girl give go gold good got grass green ground "
    "group grow hand hard has have he head hear heavy help her here high hill him his hold horse house how if in "
    "inside into is it its jump just keep kind know land large last late left less light like line little long look "
    "low made make man many may me middle might more morning most mountain move much must my name near need never "
    "new next night no north not now number object of off often old on once one only open or orange other our out "
    "outside over paper part pass people picture piece place plant play point pull purple push put quick quiet "
    "rain ran read red rest right river road rock room round run said same saw say scene sea second see seem "
    "shape she short should show side sign simple sit six sky slow small snow so some soon sound south space "
    "square stand star start stay step still stop story street strong such sun surface table take tall tell ten "
    "than that the their them then there these they thing think this those three through time to together too "
    "top toward tree triangle turn two under until up upon us use very video walk wall want warm was watch water "
    "wave way we well went were west what when where which while white who why wide will wind window with within "
    "without wood word work world would yellow yes you young"
).split()
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # Qwen2.5's order (151643 ...), here from id 0
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_clip(job) -> tuple[str, int, float]:
    import cv2

    path, seconds, fps, (w, h), seed = job
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    # textured background (so frames are not trivially compressible), a moving square and a moving disc
    base = (rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).repeat(8, 0).repeat(8, 1)
    base = cv2.GaussianBlur(base, (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    vx, vy = rng.uniform(-3, 3, 2)
    for i in range(n):
        frame = np.roll(base, (i // 2, i), axis=(0, 1)).copy()
        x = int((w / 2 + vx * i) % (w - 60))
        y = int((h / 2 + vy * i) % (h - 60))
        cv2.rectangle(frame, (x, y), (x + 60, y + 60), colour, -1)
        cv2.circle(frame, (int((x * 3 + i) % w), int((y * 2 + 30) % h)), 25, (255 - colour[0], 90, colour[2]), -1)
        writer.write(frame)
    writer.release()
    return path.name, n, seconds


def clips(a) -> None:
    out = a.out
    (out / "videos").mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in a.size.split("x"))
    durations = np.linspace(a.min_s, a.max_s, a.clips)
    jobs = [
        (out / "videos" / f"clip{i:02d}.mp4", float(d), (24.0, 30.0)[i % 2], (w, h), i)
        for i, d in enumerate(durations)
    ]
    with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        made = pool.map(write_clip, sorted(jobs, key=lambda j: -j[1]))  # longest first
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(a.clips) for _ in range(-(-a.samples // a.clips))])[: a.samples]
    rows = []
    for i in order:
        question = " ".join(rng.choice(WORDS, 12))
        answer = " ".join(rng.choice(WORDS, int(rng.integers(20, 61))))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "<video>" + question},
                    {"role": "assistant", "content": answer},
                ],
                "videos": [f"videos/clip{i:02d}.mp4"],
            }
        )
    (out / "train.json").write_text(json.dumps(rows))
    info = {
        "lfq_video": {
            "file_name": "train.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "videos": "videos"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    frames = sum(m[1] for m in made)
    print(
        f"prep clips: {len(made)} clips {w}x{h}, {a.min_s:g}-{a.max_s:g} s (mean {durations.mean():.1f} s), "
        f"fps 24/30, {frames} frames; {len(rows)} rows in {out}",
        flush=True,
    )


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [" ".join(WORDS[i::7]) for i in range(7)] * 4 + ["system\nuser\nassistant\nYou are a helpful assistant."]
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
        model_max_length=131072,
        padding_side="right",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


SIZES = {
    # text: hidden, intermediate, layers, heads, kv heads, vocab, tied; vision: depth, hidden, intermediate, heads
    "7b": dict(text=(3584, 18944, 28, 28, 4, 152064, False), vision=(32, 1280, 3420, 16)),
    "3b": dict(text=(2048, 11008, 36, 16, 2, 151936, True), vision=(32, 1280, 3420, 16)),
    "tiny": dict(text=(64, 128, 2, 4, 2, 152064, False), vision=(2, 32, 64, 4)),
}


def model(a) -> None:
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = make_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    hidden, inter, layers, heads, kv, vocab, tied = SIZES[a.size]["text"]
    depth, vhidden, vinter, vheads = SIZES[a.size]["vision"]
    head_dim = hidden // heads
    mrope = [16, 24, 24] if head_dim == 128 else [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
    text = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=128000, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        hidden_act="silu", use_sliding_window=False, sliding_window=32768, max_window_layers=layers,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=tied,
    )
    vision = dict(
        depth=depth, hidden_size=vhidden, intermediate_size=vinter, num_heads=vheads, out_hidden_size=hidden,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31] if depth == 32 else [depth - 1], tokens_per_second=2,
        hidden_act="silu", in_channels=3,
    )
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=tied,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        net = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    n_all = sum(p.numel() for p in net.parameters())
    n_vis = sum(p.numel() for n, p in net.named_parameters() if ".visual." in f".{n}" and "merger" not in n)
    n_merger = sum(p.numel() for n, p in net.named_parameters() if "merger" in n)
    net.save_pretrained(a.out, max_shard_size="5GB")
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}  # the hub model's min/max pixels
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    proc.save_pretrained(a.out)
    print(
        f"prep model: qwen2.5-vl {a.size} on {device}: {n_all / 1e9:.3f}B params (vision tower {n_vis / 1e9:.3f}B, "
        f"merger {n_merger / 1e9:.4f}B), tokenizer {len(tok)} ids, special ids {ids}, in {a.out}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["clips", "model"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", default="7b")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--samples", type=int, default=144)
    ap.add_argument("--min-s", dest="min_s", type=float, default=2.0)
    ap.add_argument("--max-s", dest="max_s", type=float, default=60.0)
    a = ap.parse_args()
    if a.what == "clips":
        a.size = a.size if "x" in a.size else "640x360"
        clips(a)
    else:
        model(a)


if __name__ == "__main__":
    main()
