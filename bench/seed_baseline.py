# The seed approach, kept as the seed wrote it: the baseline `bench/train_throughput.py --seed-script` runs.
# Not vtt code and not restyled, so ruff leaves it alone:
# ruff: noqa
# fmt: off
"""Seed-approach baseline: TRL SFTTrainer + DeepSpeed ZeRO-2 ("auto" config) on a LLaVA-interleave
architecture with random weights and 5 random 384px frames per sample, as the seed README does it.

Measures steady-state step time, tokens/s, model TFLOP/s, MFU (989 TFLOP/s bf16 dense) and peak memory.
Run under the deepspeed launcher. The reference definition of "the seed approach" for benchmarks.

  python seed_baseline.py --size 0.5b --steps 30 --frames 5
"""
import argparse, json, os, tempfile, time

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast,
                          Qwen2Config, SiglipVisionConfig, TrainerCallback)

try:
    from transformers import SiglipImageProcessorPil as ImgProc
except ImportError:
    from transformers import SiglipImageProcessor as ImgProc

# Qwen1.5 text towers of llava-interleave-qwen-{0.5b,7b}-hf; SigLIP so400m-patch14-384 vision tower.
TEXT = {
    "0.5b": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=152064),
}
VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
              image_size=384, patch_size=14)
TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% for p in m['content'] %}"
            "{% if p['type'] == 'image' %}{{ '<image>' }}{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
            "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
WORDS = "the a cat dog runs jumps video frame red blue left right sits on table what is in this scene".split()


def tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<unk>", "<s>", "<image>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="<|im_end|>", extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = TEMPLATE
    return fast


def build(size, out):
    tok = tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    text = Qwen2Config(**TEXT[size], max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=(size == "0.5b"),
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    vision = VISION if size != "tiny" else dict(VISION, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                   num_attention_heads=4)
    cfg = LlavaConfig(vision_config=SiglipVisionConfig(**vision), text_config=text, image_token_index=image_id,
                      image_seq_length=729, vision_feature_select_strategy="full", vision_feature_layer=-1,
                      projector_hidden_act="gelu")
    with torch.device("cpu"):
        model = LlavaForConditionalGeneration(cfg)
    proc = LlavaProcessor(image_processor=ImgProc(size={"height": 384, "width": 384}, image_mean=[0.5] * 3,
                                                  image_std=[0.5] * 3),
                          tokenizer=tok, patch_size=14, vision_feature_select_strategy="full",
                          num_additional_image_tokens=0, chat_template=TEMPLATE, image_token="<image>")
    return model, proc


def samples(n, frames, rng):
    out = []
    for _ in range(n):
        q = " ".join(rng.choice(WORDS, 12))
        a = " ".join(rng.choice(WORDS, 40))
        imgs = [Image.fromarray(rng.integers(0, 255, (384, 384, 3), dtype=np.uint8)) for _ in range(frames)]
        out.append({"messages": [
            {"role": "user", "content": [{"type": "text", "text": q}] + [{"type": "image"}] * frames},
            {"role": "assistant", "content": [{"type": "text", "text": a}]}], "images": imgs})
    return out


def flops_per_token_lm(c, seq):
    n = (c.num_hidden_layers * (4 * c.hidden_size ** 2 + 3 * c.hidden_size * c.intermediate_size)
         + c.vocab_size * c.hidden_size)
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq  # dense + causal attention (fwd+bwd, no halving)


def flops_per_patch_vit(c, patches):
    n = c.num_hidden_layers * (4 * c.hidden_size ** 2 + 2 * c.hidden_size * c.intermediate_size)
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * patches


class Clock(TrainerCallback):
    def __init__(self):
        self.t = []

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t.append(time.perf_counter())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="0.5b", choices=list(TEXT))
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--local_rank", type=int, default=-1)
    a = ap.parse_args()
    from trl import SFTConfig, SFTTrainer
    from datasets import Dataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = tempfile.mkdtemp()
    ds_cfg = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
              "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                        "weight_decay": "auto"}},
              "bf16": {"enabled": "auto"},
              "zero_optimization": {"stage": a.zero, "overlap_comm": True, "contiguous_gradients": True,
                                    "reduce_bucket_size": "auto"}}
    t0 = time.perf_counter()
    model, proc = build(a.size, out)
    rng = np.random.default_rng(0)
    n = a.steps * a.batch * world
    data = Dataset.from_list(samples(n, a.frames, rng))
    cfg = SFTConfig(output_dir=out, per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=1e-5,
                    bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), logging_steps=10, save_strategy="no", report_to="none", max_length=None,
                    deepspeed=ds_cfg, gradient_checkpointing=a.gc, dataloader_num_workers=a.workers,
                    disable_tqdm=True)
    clock = Clock()
    tr = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=proc, callbacks=[clock])
    t1 = time.perf_counter()
    tr.train()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    # steady state: drop the first 5 steps
    dt = np.diff(clock.t[5:])
    step = float(np.median(dt))
    probe = tr.data_collator([data[0]])
    seq = int(probe["input_ids"].shape[1])
    c = model.config
    patches = 729 * a.frames
    f = (flops_per_token_lm(c.text_config, seq) * seq + flops_per_patch_vit(c.vision_config, 729) * patches)
    f *= a.batch * world
    n_params = sum(p.numel() for p in model.parameters())
    res = {"size": a.size, "params_b": round(n_params / 1e9, 3), "world": world, "zero": a.zero, "gc": a.gc,
           "frames": a.frames, "seq": seq, "batch": a.batch, "step_s": round(step, 4),
           "tokens_per_s_per_gpu": round(seq * a.batch / step, 1),
           "tflops_per_gpu": round(f / step / world / 1e12, 1), "mfu": round(f / step / world / 989e12, 4),
           "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if torch.cuda.is_available() else None,
           "setup_s": round(t1 - t0, 1), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
