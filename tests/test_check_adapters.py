"""`vtt check` and the disk estimate of adapter runs (use_peft): the trainable count is a really wrapped model's,
LoRA's and QLoRA's model-state memory follows the formulas of vtt.check.memory, and an adapter run's checkpoints
and final model are the adapter's size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, TINY_CONFIGS, loader, tiny_run, weight_bytes
from transformers import AutoConfig, AutoModelForImageTextToText

from vtt.check.deepspeed import check_run
from vtt.check.disk import SCRIPTS_AND_STATES, checkpoint_bytes, estimate, small_files
from vtt.cli import main as vtt
from vtt.config import parse_run_config
from vtt.models import adapters
from vtt.models.size import count_parameters, human, parameter_counts

ZERO2 = str(ROOT / "deepspeed" / "zero2.json")


def parsed(config: str | Path, *overrides: str, world: int = 1):
    return parse_run_config(["--config", str(config), *overrides], world=world, use_cpu=True)


def wrapped(demo_inputs, trainer: str, task):
    """The tiny model as the trainer builds it: loaded, then wrapped by vtt.models.adapters.wrap."""
    return adapters.wrap(loader(trainer).from_pretrained(demo_inputs[trainer]), task, trainer)


def sizes(model) -> tuple[int, int, int, int]:
    """(all, trainable, largest module, largest trained module) parameters of a real model."""
    params = list(model.parameters())
    own = [list(m.parameters(recurse=False)) for m in model.modules()]
    return (
        sum(p.numel() for p in params),
        sum(p.numel() for p in params if p.requires_grad),
        max(sum(p.numel() for p in ps) for ps in own),
        max(sum(p.numel() for p in ps if p.requires_grad) for ps in own),
    )


def adapted_layers(model) -> int:
    return sum(1 for m in model.modules() if hasattr(m, "lora_A"))


def llava_7b(tmp_path: Path, deepspeed: str = ZERO2) -> Path:
    """jobs/llava.yaml pointed at a config of llava-interleave-qwen-7b's architecture (no weights)."""
    from transformers import LlavaConfig, Qwen2Config, SiglipVisionConfig

    from vtt.models.tiny import LLAVA_TEXT, LLAVA_VISION

    folder = tmp_path / "llava-7b"
    text, vision = Qwen2Config(**LLAVA_TEXT["7b"]), SiglipVisionConfig(**LLAVA_VISION["so400m"])
    LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1).save_pretrained(folder)
    config = yaml.safe_load((ROOT / "jobs" / "llava.yaml").read_text())
    config.update(model_name_or_path=str(folder), deepspeed=deepspeed, output_dir=str(tmp_path / "run"))
    path = tmp_path / f"llava-7b-{Path(deepspeed).stem}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def quantisable(config_folder: Path) -> int:
    """Weights of the linear layers bitsandbytes stores in 4 bits: every nn.Linear but the LM head (the output
    embeddings and last module, which transformers keeps in 16 bits)."""
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(config_folder))
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear and m is not head)


CASES = [
    ("llava", []),
    ("llava", ["--lora_modules_to_save", "multi_modal_projector", "--use_dora", "true"]),
    ("llava", ["--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--use_rslora", "true"]),
    ("seq2seq", []),
]


@pytest.mark.parametrize(("trainer", "options"), CASES)
def test_counted_adapter_is_the_trainable_part_of_a_really_wrapped_model(demo_inputs, trainer, options):
    run, task, _ = parsed(TINY_CONFIGS[trainer], *tiny_run(demo_inputs, trainer), "--use_peft", "true", *options)
    base = loader(trainer).from_pretrained(demo_inputs[trainer])
    saves = task.lora_modules_to_save or []
    copied = [m for n, m in base.named_modules() if any(n == s or n.endswith(f".{s}") for s in saves)]
    copies = sum(p.numel() for m in copied for p in m.parameters())
    assert bool(copies) == bool(saves)
    model = adapters.wrap(base, task, trainer)
    total, trainable, _, _ = sizes(model)
    config = AutoConfig.from_pretrained(demo_inputs[trainer])
    counts = count_parameters(config, trainer, task=task)  # on the meta device: no weights
    assert (counts.total, counts.trained, counts.largest_layer, counts.largest_trained) == sizes(model)
    assert parameter_counts(run.model_name_or_path, trainer, task) == counts  # what the disk estimate counts with
    adapter = counts.adapter
    assert adapter.modules == adapted_layers(model) and adapter.r == task.lora_r
    assert adapter.saved == copies  # the trainable full copies of lora_modules_to_save
    assert trainable < total
    assert count_parameters(config, trainer).adapter is None  # without a task: the full model, as before


def test_lora_memory_under_zero3_is_the_formula_on_the_wrapped_model(demo_inputs):
    # jobs/llava.yaml: ZeRO-3, bf16, the vision tower frozen (peft freezes all of the base anyway); the task is
    # parsed from the ZeRO-2 tiny config, whose adapter fields are the same: a parsed ZeRO-3 config would have
    # transformers build the reference model under deepspeed.zero.Init
    overrides = [*tiny_run(demo_inputs, "llava"), "--use_peft", "true"]
    _, task, _ = parsed(TINY_CONFIGS["llava"], *overrides)
    total, trainable, largest, largest_trained = sizes(wrapped(demo_inputs, "llava", task))
    report = check_run(str(ROOT / "jobs" / "llava.yaml"), 2, overrides=overrides)
    memory = report.memory
    assert (memory.params, memory.trained) == (total, trainable)
    assert memory.params_gb == pytest.approx(2 * total / 2 / 1e9)  # every weight partitioned, frozen ones too
    assert memory.grads_gb == pytest.approx(4 * trainable / 2 / 1e9)  # ZeRO-3: the fp32 grads of the adapter only
    assert memory.optimizer_gb == pytest.approx(12 * trainable / 2 / 1e9)
    assert memory.buffers_gb == pytest.approx(2 * (largest + largest_trained) / 1e9)  # a frozen layer: no grads
    full = check_run(str(ROOT / "jobs" / "llava.yaml"), 2, overrides=tiny_run(demo_inputs, "llava")).memory
    assert memory.total_gb < full.total_gb
    assert not report.warnings  # LoRA under ZeRO-3 is partitioned as a full run is


def test_lora_model_states_of_a_7b_are_a_fraction_of_full_training(tmp_path):
    job = llava_7b(tmp_path)  # ZeRO-2, bf16, 4 GPUs
    full = check_run(job, 4).memory
    lora = check_run(job, 4, overrides=["--use_peft", "true"]).memory
    params, trained = lora.params, lora.trained
    assert lora.adapter == "LoRA r=16" and trained < params / 100
    assert lora.params_gb == pytest.approx(2 * params / 1e9)  # ZeRO-2 partitions no weight, frozen or not
    assert lora.grads_gb == pytest.approx((2 + 4) * trained / 4 / 1e9)
    assert lora.optimizer_gb == pytest.approx(12 * trained / 4 / 1e9)
    assert lora.buffers_gb == pytest.approx(full.buffers_gb)  # the same reduce buckets, allocated whole
    # the states that scale with what trains scale with the adapter: by its share of the full run's trained part
    states, full_states = lora.grads_gb + lora.optimizer_gb, full.grads_gb + full.optimizer_gb
    assert states == pytest.approx(full_states * trained / full.trained)
    assert lora.total_gb < full.total_gb / 2
    assert "LoRA" not in full.line() and f"{trained / 1e6:.1f}M trained: LoRA r=16" in lora.line()


def test_qlora_holds_the_base_in_4_bits_with_its_absmax_below_lora(tmp_path):
    job = llava_7b(tmp_path)
    lora = check_run(job, 4, overrides=["--use_peft", "true"])
    qlora = check_run(job, 4, overrides=["--use_peft", "true", "--load_in_4bit", "true"])
    nested = check_run(
        job, 4, overrides=["--use_peft", "true", "--load_in_4bit", "true", "--use_bnb_nested_quant", "1"]
    )
    quantised = quantisable(tmp_path / "llava-7b")
    params = qlora.memory.params
    assert qlora.parameters["adapter"]["quantised"] == quantised
    # bitsandbytes: 2 weights a byte + one fp32 absmax per block of 64; nested, that absmax in 8 bits with one
    # fp32 absmax per 256 of them. Everything else (embeddings, LM head, norms, biases, adapter): bf16.
    assert qlora.memory.params_gb == pytest.approx(((0.5 + 4 / 64) * quantised + 2 * (params - quantised)) / 1e9)
    nested_bytes = 0.5 + 1 / 64 + 4 / (64 * 256)
    assert nested.memory.params_gb == pytest.approx((nested_bytes * quantised + 2 * (params - quantised)) / 1e9)
    assert nested.memory.total_gb < qlora.memory.total_gb < lora.memory.total_gb
    for q in (qlora, nested):  # the adapter trains as under LoRA
        assert (q.memory.grads_gb, q.memory.optimizer_gb) == (lora.memory.grads_gb, lora.memory.optimizer_gb)
        assert f"{human(quantised)} base weights in 4 bits" in q.parameters["line"]
    assert "on a 4-bit base" in qlora.memory.line() and not qlora.warnings  # ZeRO-2: nothing to warn of


def test_qlora_under_zero3_warns_that_its_base_is_not_partitioned(tmp_path):
    job = llava_7b(tmp_path, str(ROOT / "deepspeed" / "zero3.json"))
    zero2 = check_run(llava_7b(tmp_path), 4, overrides=["--use_peft", "true", "--load_in_4bit", "true"]).memory
    qlora = check_run(job, 4, overrides=["--use_peft", "true", "--load_in_4bit", "true"])
    [warning] = qlora.warnings
    assert warning.key == "zero_optimization.stage" and warning.value == 3
    assert "whole on every GPU" in warning.detail and "bnb_4bit_quant_storage is unset" in warning.detail
    assert "zero2.json" in warning.fix
    assert qlora.memory.params_gb == pytest.approx(zero2.params_gb)  # counted whole, as under ZeRO-2
    qlora_args = ["--use_peft", "true", "--load_in_4bit", "true"]
    stored = check_run(job, 4, overrides=[*qlora_args, "--bnb_4bit_quant_storage", "bfloat16"])
    [warning] = stored.warnings
    assert "whole on every GPU" in warning.detail and "bnb_4bit_quant_storage" not in warning.detail
    lora = check_run(job, 4, overrides=["--use_peft", "true"])
    assert not lora.warnings and lora.memory.params_gb == pytest.approx(2 * lora.memory.params / 4 / 1e9)


def test_qlora_weight_bytes_are_what_bitsandbytes_holds(demo_inputs):
    import bitsandbytes as bnb  # a test extra too: bitsandbytes 0.50 quantises on a CPU as well
    from transformers import BitsAndBytesConfig

    from vtt.check.memory import quantised_bytes

    config = AutoConfig.from_pretrained(demo_inputs["llava"])
    for nested in (False, True):
        _, task, _ = parsed(
            TINY_CONFIGS["llava"],
            *tiny_run(demo_inputs, "llava"),
            "--use_peft",
            "true",
            "--load_in_4bit",
            "true",
            "--use_bnb_nested_quant",
            str(nested),
        )
        counts = count_parameters(config, "llava", task=task)
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=nested
        )
        model = AutoModelForImageTextToText.from_pretrained(
            demo_inputs["llava"], quantization_config=quantization, dtype=torch.bfloat16, device_map={"": "cpu"}
        )
        held = weight_bytes(model)
        assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) > 0
        base = counts.total - counts.trained  # the model before its adapter
        adapter = counts.adapter
        assert held == pytest.approx(quantised_bytes(adapter) + 2 * (base - adapter.quantised), rel=0.01)


def test_adapter_run_checkpoints_and_final_model_are_the_adapters_size(tmp_path):
    job = llava_7b(tmp_path)  # ZeRO-2, bf16, save_total_limit 2
    run, task, training = parsed(job)
    _, lora_task, lora_training = parsed(job, "--use_peft", "true")
    full = estimate(run, training, "llava", task)
    lora = estimate(run, lora_training, "llava", lora_task)
    assert lora[0].path == full[0].path == Path(training.output_dir)
    assert lora[0].bytes < full[0].bytes / 50
    assert "adapter weights (adapter_model.safetensors)" in lora[0].what
    counts = parameter_counts(run.model_name_or_path, "llava", lora_task)
    trained, extra = counts.trained, small_files(run.model_name_or_path)
    # adapter weights (bf16) + their fp32 master and Adam moments + DeepSpeed's module states of the trainable
    # parameters only (exclude_frozen_parameters)
    checkpoint, final, _ = checkpoint_bytes(counts.total - trained, lora_training, extra, adapter=trained)
    assert checkpoint == trained * (2 + 12 + 2) + extra + SCRIPTS_AND_STATES
    assert final == 2 * trained + extra  # adapter_model.safetensors, not the base's weights
    assert lora[0].bytes == (training.save_total_limit + 1) * checkpoint
    assert estimate(run, lora_training, "llava")[0].bytes == full[0].bytes  # no task: a full run's, as before


def test_vtt_check_prints_what_trains(demo_inputs, capsys):
    argv = ["check", "--config", TINY_CONFIGS["llava"], "--gpus", "2", *tiny_run(demo_inputs, "llava")]
    _, task, _ = parsed(TINY_CONFIGS["llava"], *tiny_run(demo_inputs, "llava"), "--use_peft", "true")
    model = wrapped(demo_inputs, "llava", task)
    total, trainable, _, _ = sizes(model)
    assert vtt([*argv, "--use_peft", "true"]) == 0
    out = capsys.readouterr().out
    share = f"{100 * trainable / total:.2f}%"
    line = f"trainable {human(trainable)} of {human(total)} parameters ({share}), LoRA r={task.lora_r} on "
    assert f"{line}{adapted_layers(model)} modules" in out.splitlines()
    assert vtt([*argv, "--use_peft", "true", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["parameters"]["total"], report["parameters"]["trainable"]) == (total, trainable)
    assert report["parameters"]["adapter"]["modules"] == adapted_layers(model)
    assert report["memory"]["adapter"] == f"LoRA r={task.lora_r}"
    assert vtt(argv) == 0
    assert "LoRA" not in capsys.readouterr().out  # a full run says what trains without an adapter


def test_targets_peft_cannot_find_are_an_error_of_the_check(demo_inputs):
    overrides = [*tiny_run(demo_inputs, "llava"), "--use_peft", "true", "--lora_target_modules", "no_such_layer"]
    report = check_run(TINY_CONFIGS["llava"], 1, overrides=overrides)
    [error] = report.errors
    assert (
        error.key == "lora_target_modules" and "no_such_layer" in error.detail and error.file == TINY_CONFIGS["llava"]
    )
    assert report.memory.skipped and report.parameters is None


@pytest.mark.slow
def test_adapter_checkpoint_on_disk_is_what_the_estimate_says(demo_inputs, tmp_path):
    out = tmp_path / "run"
    overrides = [*tiny_run(demo_inputs, "llava"), "--use_peft", "true", "--output_dir", str(out)]
    overrides += ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2"]
    command = [sys.executable, "-m", "vtt.cli", "run", "--config", TINY_CONFIGS["llava"], "--gpus", "1", *overrides]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run, task, training = parsed(TINY_CONFIGS["llava"], *overrides)
    counts = parameter_counts(run.model_name_or_path, "llava", task)
    extra = small_files(run.model_name_or_path)
    checkpoint, final, _ = checkpoint_bytes(counts.total - counts.trained, training, extra, adapter=counts.trained)
    folder = out / "checkpoint-2"
    measured = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert abs(checkpoint - measured) / measured < 0.10, (checkpoint, measured)
    # DeepSpeed's module states hold the trained parameters only (the Trainer passes exclude_frozen_parameters)
    (states,) = folder.glob("global_step*/mp_rank_00_model_states.pt")
    module = torch.load(states, weights_only=False, map_location="cpu")["module"]
    trained = {name for name, p in wrapped(demo_inputs, "llava", task).named_parameters() if p.requires_grad}
    assert trained <= set(module) and not [k for k in module if k.endswith(".weight") and k not in trained]
    assert not (out / "model.safetensors").exists() and (out / adapters.ADAPTER_WEIGHTS).is_file()
    weights = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert abs((final - extra) - weights) / weights < 0.10, (final - extra, weights)
