"""Fine-tune a seq2seq model (NLLB by default) on question + video metadata -> caption.

deepspeed --num_gpus 4 --module vtt.train.seq2seq --config jobs/seq2seq.yaml [--name value ...]
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer

from vtt import collective
from vtt.after.metrics import score
from vtt.data.datasets import seq2seq_dataset
from vtt.models.nllb import set_languages
from vtt.train.harness import fit, start


class SummedCrossEntropy(torch.autograd.Function):
    """Cross-entropy summed over the positions whose label is not -100, in fp32, a chunk of rows at a time.

    NLLB's 256k-token vocabulary makes `logits.float()` a full fp32 copy of the logits, and autograd keeps
    another for the backward. Here each chunk is upcast, reduced and freed; the backward recomputes its
    chunk's softmax from the (bf16) logits kept anyway and writes the gradient in their dtype. Exact:
    equal to `cross_entropy(logits.float(), labels, reduction="sum")` and its gradient.
    """

    CHUNK = 2048  # rows: a 2048 x 256k fp32 chunk is 2 GB at most

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for first in range(0, logits.shape[0], SummedCrossEntropy.CHUNK):
            rows = slice(first, first + SummedCrossEntropy.CHUNK)
            total += torch.nn.functional.cross_entropy(
                logits[rows].float(), labels[rows], ignore_index=-100, reduction="sum"
            )
        ctx.save_for_backward(logits, labels)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        logits, labels = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for first in range(0, logits.shape[0], SummedCrossEntropy.CHUNK):
            rows = slice(first, first + SummedCrossEntropy.CHUNK)
            chunk = torch.softmax(logits[rows].float(), dim=-1)
            kept = labels[rows] != -100
            chunk[kept, labels[rows][kept]] -= 1.0
            chunk[~kept] = 0.0
            grad[rows] = (chunk * grad_total).to(grad.dtype)
        return grad, None


def token_sum_loss(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy summed over the batch's target tokens, divided by the tokens of the whole step.

    M2M100 averages its loss per process, while the Trainer (average_tokens_across_devices) scales the
    loss by the process count as if it were divided by the global token count: under 2 processes the
    loss and gradient came out doubled. Dividing the sum by the global count here makes N processes
    give exactly the 1-process loss and gradient. The sum runs in fp32 without an fp32 copy of the
    logits (SummedCrossEntropy).
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    total = SummedCrossEntropy.apply(logits.flatten(0, 1), labels.flatten().to(logits.device))
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    return total / count


def with_decoder_inputs(collator, config):
    """Add decoder_input_ids (labels shifted right) to each batch.

    The Trainer hands labels to token_sum_loss instead of the model, so the model cannot derive its
    decoder inputs from them; M2M100 has no prepare_decoder_input_ids_from_labels for the collator.
    """

    def collate(features):
        batch = collator(features)
        labels = batch["labels"]
        shifted = labels.new_full(labels.shape, config.pad_token_id)
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, config.pad_token_id)
        shifted[:, 0] = config.decoder_start_token_id
        batch["decoder_input_ids"] = shifted
        return batch

    return collate


def generation_metrics(tokenizer):
    """compute_metrics for predict_with_generate: BLEU, chrF, exact match of the decoded generations."""

    def compute(prediction) -> dict[str, float]:
        # -100 marks label padding (and padding of generations gathered across processes): not a token id.
        generated = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
        labels = np.where(prediction.label_ids != -100, prediction.label_ids, tokenizer.pad_token_id)
        return score(
            [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)],
            [text.strip() for text in tokenizer.batch_decode(labels, skip_special_tokens=True)],
        )

    return compute


@collective.closes_process_groups
def main(argv: list[str] | None = None) -> None:
    started = start(argv, "seq2seq")
    run, text, training = started.run, started.task, started.training
    tokenizer = AutoTokenizer.from_pretrained(run.model_name_or_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(run.model_name_or_path, **started.load_options)
    set_languages(tokenizer, model, text.src_lang, text.tgt_lang)
    model = started.adapt(model)

    def tokenize(batch):
        return tokenizer(
            batch["source"],
            text_target=batch["target"],
            max_length=text.max_source_length,
            truncation=True,
        )

    def prepare(path):
        data = seq2seq_dataset(path)
        return data.map(tokenize, batched=True, remove_columns=data.column_names)

    train = prepare(run.dataset)
    evaluation = prepare(run.eval_dataset) if run.eval_dataset else None
    trainer = Seq2SeqTrainer(
        model=model,
        args=training,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=with_decoder_inputs(DataCollatorForSeq2Seq(tokenizer, model=model), model.config),
        processing_class=tokenizer,
        compute_loss_func=token_sum_loss,
        compute_metrics=generation_metrics(tokenizer) if training.predict_with_generate else None,
        callbacks=started.callbacks(),
    )
    data = {"dataset": run.dataset, "train_samples": len(train), "src_lang": text.src_lang, "tgt_lang": text.tgt_lang}
    eval_options = {"max_new_tokens": text.max_target_length}
    fit(trainer, started, data=data, companion=model.generation_config, eval_options=eval_options)


if __name__ == "__main__":
    main()
