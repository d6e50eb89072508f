"""Random-weight models built from configs: tiny ones for the demo and the tests (`vtt demo` builds
them), real architectures (LLaVA-interleave-0.5B/7B, NLLB-600M) for the GPU benchmarks.

No weights come from a hub: each model is made from a config with random weights, its tokenizer is
trained here on a small word list, and both are written with `save_pretrained` so that the trainers
load them through the same `from_pretrained` path as a real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    M2M100Config,
    M2M100ForConditionalGeneration,
    NllbTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

try:  # transformers 5 without torchvision ships the PIL image processors
    from transformers import SiglipImageProcessorPil as SiglipImageProcessor
except ImportError:  # pragma: no cover - depends on the installed extras
    from transformers import SiglipImageProcessor

from vtt.demo_words import VOCABULARY

# ChatML, as llava-interleave-qwen uses, one `<image>` per image part.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Text towers: tiny, and Qwen1.5 of llava-interleave-qwen-{0.5b,7b}-hf.
LLAVA_TEXT = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=False),
    "0.5b": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6),
}  # fmt: skip
# Vision towers: tiny, and SigLIP-so400m-patch14-384 (729 tokens a frame) of the real models.
LLAVA_VISION = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8),
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                   image_size=384, patch_size=14),
}  # fmt: skip
NLLB_SIZES = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256),
    "600m": dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                 decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, vocab_size=256206,
                 max_position_embeddings=1024),
}  # fmt: skip
NLLB_LANGUAGES = ["eng_Latn", "fra_Latn", "deu_Latn"]


def _corpus() -> list[str]:
    return [" ".join(VOCABULARY)] * 20


def byte_bpe_tokenizer(
    special: list[str], eos: str, chat_template: str, extra_special_tokens: dict[str, str] | None = None, **named: str
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the demo words, with `special` tokens (`<pad>` and `<unk>` first),
    `eos`, the chat template, and named extra special tokens (`image_token`, `video_token`, ...) that the
    processors read as tokenizer attributes. `named`: further standard names (bos_token, ...)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token=eos,
        extra_special_tokens=extra_special_tokens or {},
        **named,
    )
    fast.chat_template = chat_template
    return fast


def llava_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the ChatML and `<image>` special tokens."""
    special = ["<pad>", "<unk>", "<image>", "<|im_start|>", "<|im_end|>"]
    return byte_bpe_tokenizer(special, "<|im_end|>", CHAT_TEMPLATE, {"image_token": "<image>"})


def build_tiny_llava(out: str | Path, seed: int = 0) -> Path:
    """Tiny Qwen2 text + SigLIP vision LLaVA with a LlavaProcessor, saved to `out`."""
    return build_llava(out, "tiny", "tiny", seed=seed)


def build_llava(
    out: str | Path, text_size: str, vision_size: str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """A random LLaVA (Qwen2 text of `text_size` + SigLIP vision of `vision_size`) and its processor, saved."""
    torch.manual_seed(seed)
    tok = llava_tokenizer()
    text = Qwen2Config(
        **{"vocab_size": len(tok), **LLAVA_TEXT[text_size]},
        max_position_embeddings=32768,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    vision = SiglipVisionConfig(**LLAVA_VISION[vision_size])
    image_size, patch_size = vision.image_size, vision.patch_size
    image_tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=image_tokens,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).to(dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    # Deliberately without patch_size / vision_feature_select_strategy, as many hub processors ship:
    # the llava trainer must fill them in from the model config (the seed's "processor fix").
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE, image_token="<image>"
    )
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def nllb_tokenizer() -> NllbTokenizer:
    """An NLLB tokenizer (metaspace BPE, language codes as special tokens) trained on the demo words."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return NllbTokenizer(
        vocab=vocab, merges=merges, src_lang="eng_Latn", tgt_lang="eng_Latn", extra_special_tokens=NLLB_LANGUAGES
    )


def build_tiny_nllb(out: str | Path, seed: int = 0) -> Path:
    """A tiny NLLB-architecture M2M100 with its tokenizer, saved to `out`."""
    return build_nllb(out, "tiny", seed=seed)


def build_nllb(out: str | Path, size: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """A random NLLB-architecture M2M100 of `size` with a locally trained NLLB tokenizer, saved to `out`."""
    torch.manual_seed(seed)
    tok = nllb_tokenizer()
    config = M2M100Config(
        **{"vocab_size": len(tok), **NLLB_SIZES[size]},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        scale_embedding=True,
        # No dropout and no LayerDrop (M2M100Config's default skips each layer with p=0.05 a step): runs on
        # different process counts draw different random numbers, and must see the same computation to be compared.
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
    )
    model = M2M100ForConditionalGeneration(config).to(dtype)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
