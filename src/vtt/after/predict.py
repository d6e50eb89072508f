"""Answers from a trained model for videos (`vtt predict`, `make predict`), written as JSONL.

    vtt predict --model outputs/demo/runs/tiny-llava --manifest outputs/demo/videos/manifest.jsonl
    vtt predict --model outputs/demo/runs/tiny-seq2seq --video outputs/demo/videos/clip000.mp4 \
        --question "what colour is the shape and where does it move"

The model folder's config says which trainer made it: an encoder-decoder is a seq2seq model
(question + video metadata -> caption, the NLLB target language forced), an image-text-to-text model
is a llava model (sampled frames + question through the processor's chat template). A hub id works
the same way: it is the same `from_pretrained` call. Settings the trainer used (num_frames, languages)
are read from the run config it saved beside the weights (vtt-run.json), unless given here.

A run trained with `use_peft: true` saved an adapter, not a model: it is asked the same way, its base
(adapter_config.json's base_model_name_or_path) loaded with the adapter applied (vtt.models.adapters).
Its trainer is the one vtt-run.json names, else the base's config says it.

This module comes after the trainers: it reuses their processor and language set-up so that a model
is asked exactly as it was taught.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vtt.data.datasets import DOWNLOAD_CACHE, is_prepared, local_video, manifest_entries, seq2seq_source
from vtt.data.download import DownloadError
from vtt.data.video import VideoError
from vtt.files import RUN_RECORD, write_atomically
from vtt.models import adapters
from vtt.outputs import check_output_file

DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class Item:
    """One question to answer: a video (or frames already decoded) for llava, a source text for seq2seq."""

    id: str
    question: str
    reference: str | None = None
    video: str | None = None
    frames: list | None = None
    clip: dict[str, Any] | None = None  # the frames' times, the clip's rate and length (video processors)
    source: str | None = None
    error: str | None = None  # why this item gets no prediction (a bad manifest line, a clip that failed)
    prediction: str | None = None


def trainer_of_model(model: str) -> str:
    """'seq2seq' for an encoder-decoder, 'llava' for an image-text-to-text model; a ValueError otherwise.

    An adapter folder (a use_peft run or one of its checkpoints) is its run's trainer (vtt-run.json), else
    its base model's."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if adapters.is_adapter(model):
        return trainer_of_adapter(model)
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{model}: not a model folder (no config.json), nor an adapter ({adapters.ADAPTER_CONFIG}), "
            f"nor a loadable hub id: {err}"
        ) from None
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "llava"
    raise ValueError(
        f"{model}: model_type {config.model_type!r} is neither an encoder-decoder (seq2seq trainer) nor an "
        "image-text-to-text model (llava trainer); vtt cannot ask it about videos"
    )


def trainer_of_adapter(folder: str | Path) -> str:
    """The trainer of the run that saved the adapter in `folder`: vtt-run.json's, else the base model's."""
    record = Path(folder) / RUN_RECORD
    trainer = json.loads(record.read_text()).get("trainer") if record.is_file() else None
    if trainer in adapters.AUTO_CLASSES:
        return trainer
    base = adapters.base_of(folder)
    try:
        return trainer_of_model(base)
    except ValueError as err:
        raise ValueError(f"{folder}: an adapter on {base}, whose trainer is unknown: {err}") from None


def tokenizer_source(model: str) -> str:
    """Where the tokenizer or processor of `model` is: the folder itself, or an adapter checkpoint's base when
    the checkpoint holds none (the run folder always has one)."""
    if adapters.is_adapter(model) and not any(
        (Path(model) / name).is_file() for name in ("tokenizer_config.json", "processor_config.json")
    ):
        return adapters.base_of(model)
    return model


def load_model(model: str, trainer: str, **options: Any) -> Any:
    """The model a run saved, for generation: its full weights, or its base with the adapter applied and the
    run's generation config (the seq2seq trainer's forced language) in place of the base's."""
    from transformers import GenerationConfig

    loaded = adapters.load_trained(model, trainer, **options)
    if adapters.is_adapter(model) and (Path(model) / "generation_config.json").is_file():
        loaded.get_base_model().generation_config = GenerationConfig.from_pretrained(model)
    return loaded


def saved_settings(model: str) -> dict[str, Any]:
    """The task settings (num_frames, src_lang, tgt_lang, ...) recorded by the trainer that made `model`."""
    record = Path(model) / RUN_RECORD
    if not record.is_file():
        return {}
    return json.loads(record.read_text()).get("task", {})


def items_from_manifest(path: str | Path, trainer: str) -> list[Item]:
    """Every line of a manifest, in order; answers are optional here (they become references when present).

    A line that is not a usable sample is an item with its `error`, so it gets a failed row, not a crash.
    """
    samples, rejects = manifest_entries(path, answers=False)
    items = [
        (
            s.line,
            Item(
                id=s.id,
                question=s.question,
                reference=s.answer or None,
                video=s.video,
                source=seq2seq_source(s) if trainer == "seq2seq" else None,
            ),
        )
        for s in samples
    ]
    items += [(r.line, Item(id=r.id or str(r.line), question="", video=r.video, error=r.reason)) for r in rejects]
    return [item for _, item in sorted(items, key=lambda pair: pair[0])]


def items_from_prepared(path: str | Path, trainer: str) -> list[Item]:
    """Rows of a folder made by `vtt prepare` (llava: prompt/completion/images; seq2seq: source/target)."""
    from datasets import load_from_disk

    data = load_from_disk(str(path))
    wanted = {"llava": {"prompt", "completion", "images"}, "seq2seq": {"source", "target"}}[trainer]
    if not wanted <= set(data.column_names):
        raise ValueError(
            f"{path}: a prepared dataset for the {trainer} trainer needs columns {sorted(wanted)}, "
            f"it has {data.column_names}; prepare it with the same trainer as the model"
        )
    items = []
    for i, row in enumerate(data):
        ident = str(row.get("id") or i)
        if trainer == "seq2seq":
            items.append(Item(id=ident, question=row["source"], reference=row["target"], source=row["source"]))
            continue
        texts = [part["text"] for part in row["prompt"][0]["content"] if part["type"] == "text"]
        answer = [part["text"] for part in row["completion"][0]["content"] if part["type"] == "text"]
        items.append(Item(ident, " ".join(texts), " ".join(answer), frames=row["images"], clip=row.get("clip")))
    return items


def load_items(data: str | Path, trainer: str) -> list[Item]:
    """Items from a manifest file or a prepared dataset folder."""
    if is_prepared(data):
        return items_from_prepared(data, trainer)
    if Path(data).is_dir():
        raise ValueError(f"{data}: a folder but not one made by `vtt prepare` (no dataset_info.json); pass a manifest")
    return items_from_manifest(data, trainer)


def device_for(name: str | None) -> str:
    """'cuda' (this process's GPU under a launcher) when there is one and none was named, else 'cpu'."""
    import torch

    if name:
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


class LlavaAnswerer:
    """A clip + question through the model's own processor (vtt.data.collate, as in training), answered by
    greedy generation. The clip is sampled as the run that made the model sampled it (its vtt-run.json)."""

    def __init__(self, model: str, device: str, dtype: str, settings: dict[str, Any], max_new_tokens: int):
        from transformers import AutoProcessor

        from vtt.data.collate import sampling_for
        from vtt.models.families import family_of, set_pixel_budget
        from vtt.models.llava import fix_processor

        self.processor = AutoProcessor.from_pretrained(tokenizer_source(model))
        self.model = load_model(model, "llava", dtype=dtype).to(device).eval()
        fix_processor(self.processor, self.model.config)
        set_pixel_budget(self.processor, settings.get("min_pixels"), settings.get("max_pixels"))
        self.family = family_of(self.model.config, self.processor)
        self.sampling = sampling_for(self.processor, self.family, settings)
        self.device, self.max_new_tokens = device, max_new_tokens

    def load(self, item: Item) -> None:
        """Decode the item's clip (VideoError, DownloadError when it cannot give frames)."""
        from vtt.data.datasets import repeated_to
        from vtt.data.video import read_clip

        if item.frames is None:
            clip = read_clip(local_video(item.video, DOWNLOAD_CACHE), self.sampling)
            if self.family.fixed_frames:
                clip = repeated_to(clip, self.sampling.num_frames)
            item.frames, item.clip = clip.frames, clip.timing()

    def answer(self, items: list[Item]) -> list[str]:
        import torch

        from vtt.data.collate import generation_inputs

        clips = [([_rgb(frame) for frame in item.frames], item.clip) for item in items]
        inputs = generation_inputs(self.processor, self.family, [item.question for item in items], clips)
        inputs = {key: value.to(self.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _rgb(frame: Any) -> Any:
    """A frame as an RGB array (a prepared folder's frames load as PIL images)."""
    import numpy as np

    return np.asarray(frame.convert("RGB")) if isinstance(frame, Image.Image) else frame


class Seq2SeqAnswerer:
    """Question + metadata -> caption, the target language forced as the first generated token."""

    def __init__(self, model: str, device: str, dtype: str, src_lang: str, tgt_lang: str, max_new_tokens: int):
        from transformers import AutoTokenizer

        from vtt.models.nllb import set_languages

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(model))
        self.model = load_model(model, "seq2seq", dtype=dtype).to(device).eval()
        set_languages(self.tokenizer, self.model, src_lang, tgt_lang)
        self.device, self.max_new_tokens = device, max_new_tokens

    def load(self, item: Item) -> None:
        """Nothing to read: the source text is in the item."""

    def answer(self, items: list[Item]) -> list[str]:
        import torch

        inputs = self.tokenizer(
            [item.source or item.question for item in items], padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


def answerer(
    model: str,
    trainer: str,
    device: str | None = None,
    dtype: str = "auto",
    num_frames: int | None = None,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    max_new_tokens: int | None = None,
) -> LlavaAnswerer | Seq2SeqAnswerer:
    """The model loaded for generation, with the trainer's recorded settings unless given here."""
    saved = saved_settings(model)
    device = device_for(device)
    # A caption as long as the seq2seq trainer let targets be; llava answers get a fixed budget.
    max_new_tokens = max_new_tokens or saved.get("max_target_length", DEFAULT_MAX_NEW_TOKENS)
    if trainer == "llava":
        settings = {**saved, "num_frames": num_frames or saved.get("num_frames", 5)}
        return LlavaAnswerer(model, device, dtype, settings, max_new_tokens)
    return Seq2SeqAnswerer(
        model,
        device,
        dtype,
        src_lang or saved.get("src_lang", "eng_Latn"),
        tgt_lang or saved.get("tgt_lang", "eng_Latn"),
        max_new_tokens,
    )


def batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# What one item can raise while it is read or answered, without the next one being affected: its row fails.
ITEM_ERRORS = (VideoError, DownloadError, ValueError, RuntimeError, OSError)


def answers_or_errors(model_answers, items: list[Item]) -> list[str | Exception]:
    """Each item's answer, or the error it raised: a batch that fails is answered again item by item."""
    try:
        return list(model_answers.answer(items))
    except ITEM_ERRORS as err:
        if len(items) == 1:
            return [err]
    return [answer for item in items for answer in answers_or_errors(model_answers, [item])]


def predict(model: str, items: list[Item], batch_size: int = 8, **settings: Any) -> list[dict[str, Any]]:
    """One row (id, question, reference when known, prediction) per item, in order, with a progress bar.

    An item that cannot be answered (a bad manifest line, a clip that fails to decode, an error while
    generating for it) gets a row with `"prediction": null` and its `error`; the others go on.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    trainer = trainer_of_model(model)
    model_answers = answerer(model, trainer, **settings)
    rows = []
    with tqdm(total=len(items), desc=f"predict ({trainer})", unit="sample", file=sys.stderr) as bar:
        for batch in batches(items, batch_size):
            for item in batch:
                if item.error is None:
                    try:
                        model_answers.load(item)
                    except (VideoError, DownloadError) as err:
                        item.error = str(err)
            ready = [item for item in batch if item.error is None]
            for item, answer in zip(ready, answers_or_errors(model_answers, ready), strict=True):
                if isinstance(answer, Exception):
                    item.error = f"{type(answer).__name__}: {answer}"
                else:
                    item.prediction = answer.strip()
            for item in batch:
                row = {"id": item.id, "question": item.question}
                if item.reference is not None:
                    row["reference"] = item.reference
                row["prediction"] = None if item.error else item.prediction
                if item.error:
                    row["error"] = item.error
                    print(f"vtt predict: no prediction for {item.id}: {item.error}", file=sys.stderr)
                rows.append(row)
            bar.update(len(batch))
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    return write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `vtt predict` and `vtt eval`."""
    parser.add_argument(
        "--model", required=True, help="a folder saved by vtt (its output_dir: a full model or an adapter) or a hub id"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples generated together")
    parser.add_argument("--device", help="torch device, e.g. cuda:1 or cpu (default: the GPU when there is one)")
    parser.add_argument("--dtype", default="auto", help="weights dtype: auto (as saved), bfloat16, float32, ...")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"longest answer in tokens (default: seq2seq max_target_length as trained, else {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument("--num-frames", type=int, help="llava: frames per video (default: as trained, else 5)")
    parser.add_argument("--src-lang", help="seq2seq: NLLB code of the question (default: as trained, else eng_Latn)")
    parser.add_argument("--tgt-lang", help="seq2seq: NLLB code of the answer (default: as trained, else eng_Latn)")


def generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "device": args.device,
        "dtype": args.dtype,
        "num_frames": args.num_frames,
        "src_lang": args.src_lang,
        "tgt_lang": args.tgt_lang,
        "max_new_tokens": args.max_new_tokens,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generation_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="a manifest (.jsonl/.csv) or a folder made by `vtt prepare`")
    source.add_argument("--video", help="one video file; needs --question")
    parser.add_argument("--question", help="the question to ask about --video")
    parser.add_argument("--out", type=Path, help="JSONL to write (default: predictions.jsonl here)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    trainer = trainer_of_model(args.model)
    if args.video:
        if not args.question:
            raise ValueError("--video needs --question: the question to ask about it")
        if not Path(args.video).is_file():
            raise ValueError(f"{args.video}: no such video file")
        items = [Item(id=Path(args.video).stem, question=args.question, video=args.video, source=args.question)]
        out = args.out or Path("predictions.jsonl")
    else:
        if args.question:
            raise ValueError("--question goes with --video; a manifest holds its own questions")
        items = load_items(args.manifest, trainer)
        out = args.out or Path("predictions.jsonl")
    check_output_file(out, "predict", [args.manifest or args.video])  # before the model loads
    rows = predict(args.model, items, args.batch_size, **generation_settings(args))
    write_jsonl(rows, out)
    for row in rows[:5]:
        print(f"{row['id']}: {row['prediction']}")
    failed = sum(row["prediction"] is None for row in rows)
    print(f"vtt predict: {len(rows) - failed} prediction(s) from the {trainer} model {args.model} -> {out}")
    if failed:
        print(f'vtt predict: {failed} sample(s) got none: their rows say why ("error")')
    return 1 if rows and failed == len(rows) else 0
