"""NLLB (question + video metadata -> caption): the language codes of its tokenizer and generation.

Used by the seq2seq trainer and by `vtt predict`.
"""

from __future__ import annotations


def set_languages(tokenizer, model, src_lang: str, tgt_lang: str) -> None:
    """NLLB language codes: the source prefix, the target prefix, and generation's first token."""
    for code in (src_lang, tgt_lang):
        if tokenizer.convert_tokens_to_ids(code) == tokenizer.unk_token_id:
            raise ValueError(f"language code {code!r} is not in the tokenizer of {tokenizer.name_or_path}")
    tokenizer.src_lang, tokenizer.tgt_lang = src_lang, tgt_lang
    model.generation_config.forced_bos_token_id = tokenizer.convert_tokens_to_ids(tgt_lang)
