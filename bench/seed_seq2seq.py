"""The seed approach for the seq2seq trainer, as the seed README runs it: Seq2SeqTrainer + ZeRO-2 with
"auto" values, NLLB-600M architecture (random weights), question -> caption, micro batch 1, bf16.

    python -m deepspeed.launcher.runner --num_gpus 1 bench/seed_seq2seq.py --model DIR --manifest FILE --steps 30

Prints `RESULT {json}` with steady-state tokens/s per GPU (encoder input tokens, padding included, as
vtt's throughput callback counts them).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)


class Clock(TrainerCallback):
    def __init__(self):
        self.t: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t.append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--local_rank", type=int, default=-1)
    a = ap.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tok = AutoTokenizer.from_pretrained(a.model, src_lang="eng_Latn", tgt_lang="eng_Latn")
    model = AutoModelForSeq2SeqLM.from_pretrained(a.model)
    rows = [json.loads(line) for line in Path(a.manifest).read_text().splitlines()]
    data = Dataset.from_list([{"question": r["question"], "caption": r["answer"]} for r in rows])
    data = data.map(
        lambda b: tok(b["question"], text_target=b["caption"], max_length=128, truncation=True),
        batched=True,
        remove_columns=["question", "caption"],
    )
    ds_cfg = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        },
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    }
    cuda = torch.cuda.is_available()
    args = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=a.batch,
        max_steps=a.steps,
        learning_rate=5e-5,
        weight_decay=0.01,
        bf16=cuda,
        use_cpu=not cuda,
        deepspeed=ds_cfg,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        include_num_input_tokens_seen=True,
    )
    clock = Clock()
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tok, model=model),
        processing_class=tok,
        callbacks=[clock],
    )
    trainer.train()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    dt = np.diff(clock.t[5:])
    seen = trainer.state.num_input_tokens_seen
    tokens_per_step = seen / max(len(clock.t), 1)
    result = {
        "batch": a.batch,
        "world": world,
        "step_s": round(float(np.median(dt)), 4),
        "tokens_per_s_per_gpu": round(tokens_per_step / float(np.median(dt)) / world, 1),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
