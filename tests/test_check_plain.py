"""`vtt check` of a run without DeepSpeed (`--deepspeed ''`, `deepspeed: null`): the Trainer's own AdamW, DDP on
several GPUs. What is not DeepSpeed's is checked as for any run, also before a job is rendered; the model-state
memory is what such a run really holds (the weights as they load, a gradient and two AdamW moments per trained
weight in its dtype), and a full fine-tune of a 16-bit checkpoint is warned that it has no fp32 master weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_CONFIGS, loader, tiny_run, train, weight_bytes
from transformers import Trainer, TrainingArguments

from vtt.check.deepspeed import check_run
from vtt.check.disk import model_bytes
from vtt.cli import main as vtt
from vtt.cluster.jobs import preflight
from vtt.cluster.profiles import load_profile, profile_path
from vtt.config import parse_run_config
from vtt.models import adapters

PLAIN = ["--deepspeed", ""]


def checkpoint_in(demo_inputs, trainer: str, dtype: torch.dtype, folder: Path) -> Path:
    """The demo's tiny model saved in `dtype` (its processor files beside it), as a bf16 hub checkpoint is."""
    source = demo_inputs[trainer]
    if not folder.exists():
        shutil.copytree(source, folder)
        loader(trainer).from_pretrained(source).to(dtype).save_pretrained(folder)
    return folder


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """The bytes a model, its gradients and its optimizer's states hold (bitsandbytes' quantisation state too)."""
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    states = sum(
        v.numel() * v.element_size() for state in optimizer.state.values() for k, v in state.items() if k != "step"
    )
    return {"params": weight_bytes(model), "grads": grads, "optimizer": states}


CASES = {
    "seq2seq-fp32": ("seq2seq", torch.float32, []),
    "seq2seq-bf16": ("seq2seq", torch.bfloat16, []),
    "llava-bf16-lora": ("llava", torch.bfloat16, ["--use_peft", "true", "--lora_modules_to_save", "lm_head"]),
    "llava-bf16-qlora": ("llava", torch.bfloat16, ["--use_peft", "true", "--load_in_4bit", "true"]),
}


@pytest.mark.parametrize("case", CASES)
def test_memory_without_deepspeed_is_what_the_trainers_model_grads_and_adamw_hold(demo_inputs, tmp_path, case):
    trainer, dtype, options = CASES[case]
    model_dir = checkpoint_in(demo_inputs, trainer, dtype, tmp_path / "model")
    overrides = [*tiny_run(demo_inputs, trainer), "--model_name_or_path", str(model_dir), *PLAIN, *options]
    report = check_run(ROOT / TINY_CONFIGS[trainer], 1, overrides=overrides)
    memory = report.memory
    assert report.deepspeed == "" and not memory.zero and memory.skipped is None, report.lines()
    assert "no DeepSpeed on 1 GPU(s)" in memory.line() and report.lines()[-1] == "no DeepSpeed on 1 GPU(s): consistent"

    # The model as the trainer builds it (QLoRA's 4-bit load on this CPU, as bitsandbytes 0.50 can), one step
    # of the Trainer's own optimizer: a gradient is its parameter's shape and dtype, as autograd allocates it.
    _, task, _ = parse_run_config(["--config", TINY_CONFIGS[trainer], *overrides], world=1, use_cpu=True)
    load = {}
    if task.load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
        load = {"quantization_config": quantization, "device_map": {"": "cpu"}}
    model = adapters.wrap(loader(trainer).from_pretrained(model_dir, **load), task, trainer)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], learning_rate=1e-5)
    optimizer = Trainer(model=model, args=args).create_optimizer()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    optimizer.step()
    held = held_bytes(model, optimizer)
    assert memory.params_gb * 1e9 == pytest.approx(held["params"], rel=0.01 if task.load_in_4bit else 1e-9)
    assert memory.grads_gb * 1e9 == held["grads"] and memory.optimizer_gb * 1e9 == held["optimizer"]
    assert memory.buffers_gb == 0  # one process: no DDP buckets


def test_sixteen_bit_full_fine_tune_without_deepspeed_warns_that_small_updates_round_away(demo_inputs, tmp_path):
    bf16 = checkpoint_in(demo_inputs, "seq2seq", torch.bfloat16, tmp_path / "bf16")
    base = [*tiny_run(demo_inputs, "seq2seq"), *PLAIN, "--learning_rate", "1e-5"]
    report = check_run(ROOT / TINY_CONFIGS["seq2seq"], 1, overrides=[*base, "--model_name_or_path", str(bf16)])
    (warning,) = [w for w in report.warnings if w.key == "deepspeed"]
    assert "no fp32 master copy" in warning.detail and "1/256 of its weight" in warning.detail
    assert "1e-05 here" in warning.detail and "deepspeed/zero2.json" in warning.fix and "use_peft" in warning.fix
    assert warning.file.endswith(TINY_CONFIGS["seq2seq"])
    # What it warns of: one AdamW step (about the learning rate) on bf16 weights of a typical size leaves them as
    # they were.
    weights = torch.nn.Parameter(torch.full((64,), 0.02, dtype=torch.bfloat16))
    weights.grad = torch.ones_like(weights)
    torch.optim.AdamW([weights], lr=1e-5, weight_decay=0.0).step()
    assert torch.equal(weights.detach(), torch.full((64,), 0.02, dtype=torch.bfloat16))
    # an fp32 checkpoint (autocast under bf16, fp32 weights), an adapter, or DeepSpeed: no warning
    fp32 = check_run(ROOT / TINY_CONFIGS["seq2seq"], 1, overrides=base)
    lora = check_run(
        ROOT / TINY_CONFIGS["seq2seq"], 1, overrides=[*base, "--model_name_or_path", str(bf16), "--use_peft", "true"]
    )
    zero2 = check_run(ROOT / TINY_CONFIGS["seq2seq"], 1, overrides=[*tiny_run(demo_inputs, "seq2seq")])
    for other in (fp32, lora, zero2):
        assert not [w for w in other.warnings if w.key == "deepspeed"], other.lines()


def test_ddp_buckets_count_a_copy_of_every_gradient_and_a_model_over_the_gpu_is_an_error(demo_inputs):
    overrides = [*tiny_run(demo_inputs, "seq2seq"), *PLAIN]
    one, two = (check_run(ROOT / TINY_CONFIGS["seq2seq"], gpus, overrides=overrides).memory for gpus in (1, 2))
    assert one.buffers_gb == 0 and two.buffers_gb == two.grads_gb > 0
    assert two.params_gb == one.params_gb  # nothing is partitioned: every GPU holds the whole model
    small = check_run(ROOT / TINY_CONFIGS["seq2seq"], 1, overrides=overrides, gpu_memory_gb=one.total_gb / 2)
    (error,) = small.errors
    assert error.key == "deepspeed" and "zero3.json" in error.fix and error.file.endswith(TINY_CONFIGS["seq2seq"])
    assert f"error: {error.file}: deepspeed but model states alone need" in small.lines()[0]


def test_a_job_without_deepspeed_is_checked_before_it_is_rendered(demo_inputs):
    # Persistent workers with none to keep: torch refuses it at the first step, after the queue wait.
    profile = load_profile(profile_path("local"))
    bad = [*tiny_run(demo_inputs, "seq2seq"), *PLAIN, "--dataloader_persistent_workers", "true"]
    with pytest.raises(ValueError, match="vtt check found problems") as refused:
        preflight(profile, TINY_CONFIGS["seq2seq"], 1, overrides=bad)
    assert "dataloader_num_workers=0" in str(refused.value) and "no DeepSpeed on 1 GPU(s): 1 problem(s)" in str(
        refused.value
    )
    job = preflight(profile, TINY_CONFIGS["seq2seq"], 1, overrides=bad[:-2])
    assert job.trainer == "seq2seq"


def test_vtt_check_prints_the_plain_estimate_and_fix_needs_a_deepspeed_file(demo_inputs, capsys, tmp_path):
    words = ["check", "--config", TINY_CONFIGS["seq2seq"], "--gpus", "2", *tiny_run(demo_inputs, "seq2seq"), *PLAIN]
    assert vtt(words) == 0
    said = capsys.readouterr().out
    assert "no DeepSpeed on 2 GPU(s): model states" in said and "no DeepSpeed on 2 GPU(s): consistent" in said
    assert vtt([*words, "--fix", str(tmp_path / "fixed.json")]) == 2
    assert "--fix writes a corrected copy of a DeepSpeed file, and this run names none" in capsys.readouterr().err
    assert not (tmp_path / "fixed.json").exists()


@pytest.mark.slow
def test_disk_estimate_of_a_run_without_deepspeed_is_what_its_checkpoint_takes(demo_inputs, tmp_path):
    """Without DeepSpeed the Trainer saves the weights and AdamW's moments in the dtype the model loaded in: half
    the bytes of fp32 for a bf16 checkpoint."""
    from safetensors import safe_open

    bf16 = checkpoint_in(demo_inputs, "seq2seq", torch.bfloat16, tmp_path / "bf16")
    out = tmp_path / "run"
    saves = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(out)]
    overrides = [*tiny_run(demo_inputs, "seq2seq"), "--model_name_or_path", str(bf16), *PLAIN, *saves]
    train(TINY_CONFIGS["seq2seq"], 1, overrides)
    checkpoint = out / "checkpoint-2"
    took = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        names = list(weights.keys())  # a safetensors file: no dict to iterate
        assert {weights.get_slice(name).get_dtype() for name in names} == {"BF16"}
    run, task, training = parse_run_config(["--config", TINY_CONFIGS["seq2seq"], *overrides], world=1, use_cpu=True)
    _, estimated, _, breakdown = model_bytes(run, training, "seq2seq", task)
    assert abs(estimated - took) / took < 0.10, (estimated, took, breakdown)
    assert "(4 bytes/param)" in breakdown  # two bf16 moments
