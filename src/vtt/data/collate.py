"""Model inputs for every vision-language family, in one place: the trainer's collator and `vtt predict`.

    collate = VisionCollator(processor, family_of(model.config), pad_to_multiple_of=64)
    batch = collate(rows)   # rows: prompt / completion / images (the clip's frames) / clip (their times)

A family with a video processor gets each clip as one video part, with its metadata (the container's
rate, the sampled frames' indices, the clip's length), so its processor never decodes or samples again,
Qwen3-VL writes the frames' real times into the prompt and Qwen2.5-VL spaces its temporal patches by the
real sampled rate. LLaVA gets the frames as images, one image part each, after the question (the seed's
conversation); a video family gets its video before the question, as its model cards write it.

Each row's prompt goes through the processor alone (its visual tokens expanded there) and the answer
through the tokenizer: the labels are the answer's tokens, never a prompt or visual token. Rows are then
padded on the right, their lengths rounded up to `pad_to_multiple_of`, or with `padding_free` laid end to
end in one row (each sample's first token a prompt token, so no label crosses from one sample to the next).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vtt.data.video import Sampling
from vtt.models.families import Family, decode_size, frame_multiple

IGNORE = -100  # the label of a position the loss skips
# A clip whose frames failed to decode (and no refill decoded either) gets this stand-in so every rank
# still runs the vision tower: under ZeRO-3 a rank that skipped it would wait forever at the others'
# parameter gathers. Its row carries no label: it adds nothing to the loss.
STAND_IN_FRAMES = 2
GROUP = "group_rows"  # the key of a token-sized group's rows (vtt.data.batches)


def sampling_for(processor, family: Family, settings: dict[str, Any]) -> Sampling:
    """How a clip is sampled for `family`, from the run's video settings (num_frames, fps, max_frames,
    video_backend): the trainer, `vtt predict` on the model it saved, and the token counts all use it.

    Frames come out of the decoder at the processor's size (a 4K clip costs a worker 384 px frames); a
    Qwen-VL clip is sampled in whole temporal patches; a family that stacks a batch's clips takes num_frames.
    """
    return Sampling(
        num_frames=settings.get("num_frames") or 5,
        fps=None if family.fixed_frames else settings.get("fps"),
        max_frames=settings.get("max_frames"),
        size=decode_size(processor, family),
        backend=settings.get("video_backend") or "opencv",
        multiple=frame_multiple(processor) if family.visual_input == "video" else 1,
    )


def visual_parts(family: Family, frames: int) -> list[dict[str, str]]:
    return [{"type": "video"}] if family.visual_input == "video" else [{"type": "image"}] * frames


def user_turn(question: str, family: Family, frames: int) -> dict[str, Any]:
    """The user's turn: the question with the clip, as the family takes it."""
    text = [{"type": "text", "text": question}]
    visual = visual_parts(family, frames)
    return {"role": "user", "content": visual + text if family.visual_input == "video" else text + visual}


def question_of(prompt: Sequence[dict[str, Any]]) -> str:
    """The text of a row's turns (its visual parts, whatever the family they were written for, left out)."""
    return " ".join(part["text"] for turn in prompt for part in turn["content"] if part.get("type") == "text")


def video_metadata(clip: dict[str, Any], frames: Sequence[Any]):
    """transformers' VideoMetadata of a sampled clip: the frames' indices at the clip's own rate."""
    from transformers.video_utils import VideoMetadata

    rate = float(clip["rate"])
    height, width = np.asarray(frames[0]).shape[:2]
    return VideoMetadata(
        total_num_frames=max(len(frames), round(clip["duration"] * rate)),
        fps=rate,
        width=width,
        height=height,
        duration=float(clip["duration"]),
        frames_indices=[round(time * rate) for time in clip["times"]],
    )


def prompt_features(processor, family: Family, prompt_text: str, frames: Sequence[Any], clip: dict[str, Any] | None):
    """The processor's features for one prompt and its clip (a batch of one)."""
    if family.visual_input == "images":
        return processor(text=[prompt_text], images=[list(frames)], return_tensors="pt")
    video = np.stack([np.asarray(frame) for frame in frames])
    options = {"do_sample_frames": False}
    if clip is not None:
        options["video_metadata"] = [video_metadata(clip, frames)]
    return processor(text=[prompt_text], videos=[video], return_tensors="pt", **options)


def prompted(processor, family: Family, question: str, frames: Sequence[Any], clip: dict[str, Any] | None):
    """(the user turn, its features): the question with its clip through the chat template's generation
    prompt and the processor, as training and generation both start."""
    prompt = [user_turn(question, family, len(frames))]
    text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt, dict(prompt_features(processor, family, text, frames, clip))


def stand_in(frames: Sequence[Any]) -> list[np.ndarray]:
    size = np.asarray(frames[0]).shape if len(frames) else (32, 32, 3)
    return [np.zeros(size, dtype=np.uint8)] * STAND_IN_FRAMES


class VisionCollator:
    """Rows -> a padded training batch for `family` (see the module docstring)."""

    def __init__(
        self,
        processor,
        family: Family,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        padding_free: bool = False,
    ):
        self.processor, self.family = processor, family
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.multiple, self.max_length, self.padding_free = pad_to_multiple_of or 1, max_length, padding_free

    def row(self, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        frames, clip = row["images"], row.get("clip")
        teach = bool(frames)
        if not teach:
            frames, clip = stand_in(frames), None
        prompt, features = prompted(self.processor, self.family, question_of(row["prompt"]), frames, clip)
        answer = self.tokenizer(
            self.answer_text(prompt, row["completion"]), add_special_tokens=False, return_tensors="pt"
        )
        answer_ids = answer["input_ids"]
        length = features["input_ids"].shape[1]
        tails = {"input_ids": answer_ids, "attention_mask": torch.ones_like(answer_ids)}
        for key in sequence_keys(features, length):  # token type ids and the like: 0 (text) over the answer
            tail = tails.get(key, torch.zeros_like(answer_ids))
            features[key] = torch.cat([features[key], tail.to(features[key].dtype)], dim=1)
        labels = torch.full((1, length), IGNORE, dtype=torch.long)
        features["labels"] = torch.cat([labels, answer_ids if teach else torch.full_like(answer_ids, IGNORE)], dim=1)
        return features

    def answer_text(self, prompt: list[dict[str, Any]], completion: Sequence[dict[str, Any]]) -> str:
        """The answer as the chat template closes its turn ("...<|im_end|>\n"), to follow the generation prompt.

        Not the full conversation's text after the prompt's: some hub templates (LLaVA-OneVision's) render
        the assistant's header differently after a generation prompt than inside a conversation; vtt trains
        on the generation prompt's, the one `vtt predict` gives the model.
        """
        answer = question_of(completion)
        full_text = self.processor.apply_chat_template(prompt + list(completion), tokenize=False)
        start = full_text.rfind(answer)
        if not answer or start < 0:
            raise ValueError(f"the chat template does not render the answer {answer!r} as given")
        closed = full_text[start:]
        eos = self.tokenizer.eos_token
        # A template that ends the turn without the end token (LLaVA-NeXT-Video's) would never teach a stop.
        return closed if not eos or eos in closed else closed + eos

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if rows and GROUP in rows[0]:  # token-sized groups (vtt.data.batches): each item holds its rows
            rows = [row for item in rows for row in item[GROUP]]
        featured = []
        for row in rows:
            features = self.row(row)
            if self.max_length and features["input_ids"].shape[1] > self.max_length:
                # never cut through visual tokens: the row is left out and said so
                print(
                    f"vtt: a sample of {features['input_ids'].shape[1]} tokens is over max_length={self.max_length}; "
                    "left out (sample fewer frames or raise max_length)",
                    file=sys.stderr,
                )
                continue
            featured.append(features)
        if not featured:
            raise ValueError(f"every sample of this batch is over max_length={self.max_length}")
        if self.padding_free:
            return merge(featured, self.tokenizer.pad_token_id, 1, packed=True)
        return merge(featured, self.tokenizer.pad_token_id, self.multiple)


def sequence_keys(features: dict[str, Any], length: int) -> list[str]:
    """The features laid out along the token sequence (input_ids, attention_mask, mm_token_type_ids, ...)."""
    return [
        key
        for key, value in features.items()
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (1, length)
    ]


def generation_inputs(processor, family: Family, questions: list[str], clips: list[tuple[list, dict | None]]):
    """A batch of prompts with their clips for `generate`: padded on the left, so each answer follows its prompt."""
    featured = [
        prompted(processor, family, question, frames, clip)[1]
        for question, (frames, clip) in zip(questions, clips, strict=True)
    ]
    return merge(featured, getattr(processor, "tokenizer", processor).pad_token_id, 1, left=True)


def merge(
    featured: list[dict[str, torch.Tensor]], pad_token_id: int, multiple: int, left: bool = False, packed: bool = False
) -> dict[str, torch.Tensor]:
    """One batch of single-row features: token rows padded (on the right, or the left for generation), or
    `packed` end to end in one row (no padding, no attention mask, `position_ids` restarting per sample:
    transformers keeps attention within each, models/packing.py gives the Qwen-VL families their 3-D
    positions); visual features concatenated in the rows' order, the order their tokens come in."""
    lengths = [features["input_ids"].shape[1] for features in featured]
    width = max(lengths) + (-max(lengths) % multiple)
    fill = {"input_ids": pad_token_id, "labels": IGNORE}
    along_tokens = sequence_keys(featured[0], lengths[0])
    batch = {}
    for key in featured[0]:
        values = [features[key] for features in featured]
        if packed and key == "attention_mask":
            continue
        if packed and key in along_tokens:
            batch[key] = torch.cat(values, dim=1)
            continue
        if key in along_tokens:
            values = [
                torch.nn.functional.pad(
                    value, (width - value.shape[1], 0) if left else (0, width - value.shape[1]), value=fill.get(key, 0)
                )
                for value in values
            ]
        elif isinstance(values[0], torch.Tensor) and len({value.shape[1:] for value in values}) > 1:
            values = padded_to_one_shape(values)  # SmolVLM: rows of different frame counts
        batch[key] = (
            torch.cat(values) if isinstance(values[0], torch.Tensor) else [v for value in values for v in value]
        )
    if packed:
        batch["position_ids"] = torch.cat([torch.arange(length) for length in lengths])[None]
        batch["use_cache"] = False  # transformers reads packed positions only without a cache (eval makes one)
    return batch


def padded_to_one_shape(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tensors zero-padded at the end of each dimension past the first to their largest shape (SmolVLM drops
    frames that are all zeros, and its pixel_attention_mask marks the padding)."""
    shape = [max(value.shape[d] for value in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        pads = []
        for d in reversed(range(1, value.dim())):
            pads += [0, shape[d - 1] - value.shape[d]]
        padded.append(torch.nn.functional.pad(value, pads))
    return padded
