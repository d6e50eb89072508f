"""`vtt check`: its verdict agrees with what transformers + accelerate + DeepSpeed raise at runtime."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run

from vtt.check.deepspeed import TRAINER_OWNED, check_run, fix_deepspeed, read_deepspeed
from vtt.cli import main as vtt
from vtt.cluster.local import deepspeed_command
from vtt.config import run_command

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["vtt", "training_arguments", "transformers", "accelerate", "deepspeed"]
SHIPPED_DS = sorted((ROOT / "deepspeed").glob("*.json"))
SHIPPED_JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
AUTO = "auto"


def runtime_verdicts(cases: list[dict], tmp_path: Path) -> list[dict]:
    """tests/ds_runtime.py on the cases, in a process of its own (it starts a fake torch.distributed world)."""
    out = tmp_path / "verdicts.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ds_runtime.py"), str(out)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def cli_overrides(kwargs: dict) -> list[str]:
    out = []
    for key, value in kwargs.items():
        out += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def random_case(rng: random.Random) -> dict:
    """A DeepSpeed file (hard-coded, "auto" or absent per key), training arguments and a GPU layout."""
    args = {
        "per_device_train_batch_size": rng.choice([1, 2, 4]),
        "gradient_accumulation_steps": rng.choice([1, 2, 4]),
        "learning_rate": rng.choice([5e-5, 1e-4]),
        "max_grad_norm": rng.choice([1.0, 0.5]),
        "weight_decay": rng.choice([0.0, 0.1]),
        "adam_beta2": rng.choice([0.999, 0.95]),
        "warmup_steps": rng.choice([0, 10]),
        "max_steps": 100,
    }
    precision = rng.choice([None, "bf16", "fp16"])
    if precision:
        args[precision] = True
    gpus, nodes = rng.choice([(1, 1), (2, 1), (4, 1), (8, 1), (4, 2), (8, 2), (3, 1)])
    world = gpus * nodes
    other_world = rng.choice([1, 2, 4, 8])  # a file written for another GPU count

    def pick(right, *wrong):
        return rng.choice([AUTO, AUTO, "absent", right, *wrong])

    micro, steps = args["per_device_train_batch_size"], args["gradient_accumulation_steps"]
    ds: dict = {
        "train_micro_batch_size_per_gpu": pick(micro, micro * 2),
        "gradient_accumulation_steps": pick(steps, steps + 1),
        "train_batch_size": pick(micro * steps * world, micro * steps * other_world, 7),
        "gradient_clipping": pick(args["max_grad_norm"], 0.3),
        "bf16": {"enabled": pick(precision == "bf16", precision != "bf16")},
        "fp16": {"enabled": pick(precision == "fp16", precision != "fp16")},
        "zero_optimization": {"stage": rng.choice([0, 1, 2, 2, 3, 3])},
    }
    if rng.random() < 0.3:
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": pick(args["learning_rate"], 3e-4),
                "betas": pick([0.9, args["adam_beta2"]], [0.9, 0.9]),
                "eps": pick(1e-8, 1e-6),
                "weight_decay": pick(args["weight_decay"], 0.05),
                "torch_adam": True,
            },
        }
    if rng.random() < 0.3:
        ds["scheduler"] = {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": AUTO,
                "warmup_max_lr": pick(args["learning_rate"], 1e-3),
                "warmup_num_steps": pick(max(1, args["warmup_steps"]), 50),
                "total_num_steps": pick(args["max_steps"], 1000),
            },
        }
    zero = ds["zero_optimization"]
    if rng.random() < 0.15:
        zero["stage"] = rng.choice([4, "two"])  # DeepSpeed refuses these
    if rng.random() < 0.2:
        zero["reduce_bucket_size"] = AUTO
    if rng.random() < 0.1:
        zero["sub_group_size"] = AUTO  # nothing fills it: accelerate raises
    if rng.random() < 0.15:
        zero["offload_optimizer"] = {"device": rng.choice(["cpu", "nvme", "disk"])}
    if rng.random() < 0.05:
        del ds["zero_optimization"]

    def drop_absent(node: dict) -> dict:
        return {k: drop_absent(v) if isinstance(v, dict) else v for k, v in node.items() if v != "absent"}

    return {"ds": drop_absent(ds), "args": args, "world": world, "gpus": gpus, "nodes": nodes}


def check_case(case: dict, tmp_path: Path, name: str):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(case["ds"]))
    return check_run(None, case["gpus"], case["nodes"], cli_overrides(case["args"]), deepspeed=path)


def assert_agrees(report, runtime: dict, context: str) -> None:
    """Same verdict; the errors of the step that raises name exactly the keys it names; no error is
    reported from an earlier step (the runtime would have stopped there)."""
    assert report.ok == (runtime["stage"] is None), f"{context}\nruntime: {runtime}\ncheck: {report.lines()}"
    if runtime["stage"] is None:
        return
    at_stage = {p.key for p in report.errors if p.source == runtime["stage"]}
    assert at_stage == set(runtime["keys"]), f"{context}\nruntime: {runtime}\ncheck: {report.lines()}"
    earlier = [p for p in report.errors if ORDER.index(p.source) < ORDER.index(runtime["stage"])]
    assert not earlier, f"{context}\nruntime: {runtime}\ncheck: {report.lines()}"


def test_check_agrees_with_runtime_on_generated_files_arguments_and_layouts(tmp_path):
    rng = random.Random(20261125)
    cases = [random_case(rng) for _ in range(240)]
    verdicts = runtime_verdicts(cases, tmp_path)
    stages = {v["stage"] for v in verdicts}
    # The generator must reach every step of the runtime, else agreement proves little.
    assert stages >= {None, "training_arguments", "transformers", "accelerate", "deepspeed"}, stages
    for i, (case, runtime) in enumerate(zip(cases, verdicts, strict=True)):
        assert_agrees(check_case(case, tmp_path, f"case{i}"), runtime, f"case {i}: {json.dumps(case)}")


def test_fixed_copy_passes_check_and_runtime(tmp_path):
    rng = random.Random(7)
    cases, fixed = [], []
    while len(cases) < 40:
        case = random_case(rng)
        zero = case["ds"].get("zero_optimization", {})
        if zero.get("stage") not in (0, 1, 2, 3) or "sub_group_size" in zero or "offload_optimizer" in zero:
            continue  # --fix corrects what the Trainer owns, not ZeRO settings
        source = tmp_path / f"in{len(cases)}.json"
        source.write_text(json.dumps(case["ds"]))
        before = source.read_bytes()
        out = tmp_path / f"out{len(cases)}.json"
        fix_deepspeed(source, out)
        assert source.read_bytes() == before
        cases.append(case)
        fixed.append(dict(case, ds=read_deepspeed(out)))
    for case, runtime in zip(fixed, runtime_verdicts(fixed, tmp_path), strict=True):
        assert runtime["stage"] is None, runtime
        report = check_case(case, tmp_path, "fixed")
        assert report.ok, report.lines()
        written = case["ds"]
        for key in TRAINER_OWNED:
            parent, _, leaf = key.rpartition(".")
            node = written
            for part in parent.split(".") if parent else []:
                node = node.get(part, {})
            assert node.get(leaf, AUTO) == AUTO, key


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
@pytest.mark.parametrize("ds", SHIPPED_DS, ids=lambda p: p.name)
def test_shipped_deepspeed_file_is_consistent_with_default_arguments(ds, gpus):
    report = check_run(None, gpus, deepspeed=ds)
    assert report.ok, report.lines()
    assert report.config["train_batch_size"] == 8 * gpus  # TrainingArguments' default micro batch of 8


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("job", SHIPPED_JOBS, ids=lambda p: p.name)
def test_shipped_run_config_checks_at_gpu_count(job, gpus):
    from vtt.config import read_yaml

    config = read_yaml(job)
    report = check_run(job, gpus)
    divides = config["global_batch_size"] % (config["per_device_train_batch_size"] * gpus) == 0
    assert report.ok == divides, report.lines()
    if not divides:
        (problem,) = report.errors
        assert problem.key == "global_batch_size" and "GPU counts that divide it" in problem.fix
        return
    filled = report.config
    assert filled["train_batch_size"] == config["global_batch_size"]
    assert (
        filled["train_micro_batch_size_per_gpu"] * filled["gradient_accumulation_steps"] * gpus
        == (config["global_batch_size"])
    )


def test_check_rejects_batch_written_for_other_gpu_count(tmp_path):
    ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
    ds.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=2, train_batch_size=4)  # for 1 GPU
    path = tmp_path / "one-gpu.json"
    path.write_text(json.dumps(ds))
    args = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]
    assert check_run(None, 1, overrides=args, deepspeed=path).ok
    report = check_run(None, 4, overrides=args, deepspeed=path)
    (problem,) = report.errors
    assert (problem.key, problem.value, problem.expected) == ("train_batch_size", 4, 16)
    line = report.lines()[0]
    assert "train_batch_size=4" in line and "= 16" in line and '"auto"' in line


def test_exit_codes_name_problem_key_and_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 7, "gradient_clipping": 0.5, "zero_optimization": {"stage": 2}}))
    assert vtt(["check", "--deepspeed", str(bad), "--gpus", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: train_batch_size=7" in out and f"{bad}: gradient_clipping=0.5" in out

    assert vtt(["check", "--deepspeed", str(ROOT / "deepspeed" / "zero3.json"), "--gpus", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    broken = tmp_path / "broken.json"
    broken.write_text('{"train_batch_size": "auto",}')
    assert vtt(["check", "--deepspeed", str(broken), "--gpus", "1"]) == 2
    assert f"{broken}: not valid JSON" in capsys.readouterr().err
    assert vtt(["check", "--deepspeed", str(tmp_path / "missing.json"), "--gpus", "1"]) == 2
    assert "missing.json: no such DeepSpeed file" in capsys.readouterr().err
    assert vtt(["check", "--deepspeed", str(bad), "--gpus", "1", "--no_such_argument", "1"]) == 2
    assert "no_such_argument" in capsys.readouterr().err


def test_fix_writes_corrected_copy_and_leaves_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 7, "bf16": {"enabled": True}, "zero_optimization": {"stage": 3}}))
    before = bad.read_bytes()
    out = tmp_path / "fixed" / "zero3.json"
    assert vtt(["check", "--deepspeed", str(bad), "--gpus", "2", "--fix", str(out)]) == 1
    assert bad.read_bytes() == before
    assert vtt(["check", "--deepspeed", str(out), "--gpus", "2"]) == 0
    assert read_deepspeed(out)["zero_optimization"] == {"stage": 3}
    assert list(out.parent.iterdir()) == [out]  # no temporary left beside it
    with pytest.raises(ValueError, match="that is the file being checked"):
        fix_deepspeed(bad, bad)


def test_global_batch_that_does_not_divide_names_valid_gpu_counts():
    report = check_run(ROOT / "jobs" / "seq2seq.yaml", 3)
    (problem,) = report.errors
    assert problem.key == "global_batch_size" and problem.file.endswith("seq2seq.yaml")
    assert "GPU counts that divide it at this micro batch: [1, 2, 4]" in problem.fix


def test_run_config_values_and_overrides_are_compared(tmp_path):
    ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
    ds["bf16"]["enabled"] = False  # jobs/seq2seq.yaml trains in bf16
    ds["optimizer"] = {"type": "AdamW", "params": {"lr": 5e-5, "weight_decay": "auto"}}
    path = tmp_path / "fp32.json"
    path.write_text(json.dumps(ds))
    job = ROOT / "jobs" / "seq2seq.yaml"
    report = check_run(job, 4, deepspeed=path)
    assert [p.key for p in report.errors] == ["bf16.enabled"]  # learning_rate 5e-5 matches the run config
    report = check_run(job, 4, overrides=["--learning_rate", "1e-4", "--bf16", "false"], deepspeed=path)
    assert [(p.key, p.value, p.expected) for p in report.errors] == [("optimizer.params.lr", 5e-5, 1e-4)]


def test_gpu_count_does_not_depend_on_use_cpu():
    # Parsing on a login node switches use_cpu on; the world size the check uses is still the one given.
    report = check_run(ROOT / "jobs" / "llava.yaml", 4, nodes=2, overrides=["--per_device_train_batch_size", "2"])
    assert report.world == 8
    assert report.config["gradient_accumulation_steps"] == 8  # global_batch_size 128 / (2 x 8)


def llava_run_config(tmp_path: Path, size: str) -> Path:
    """jobs/llava.yaml pointed at a local config of llava-interleave-qwen-{size}'s architecture (no weights)."""
    import yaml
    from transformers import LlavaConfig, Qwen2Config, SiglipVisionConfig

    text = {
        "0.5b": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                     num_key_value_heads=16, vocab_size=151936, tie_word_embeddings=True),
        "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32, vocab_size=152064, tie_word_embeddings=False),
    }[size]  # fmt: skip
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                                image_size=384, patch_size=14)  # fmt: skip
    folder = tmp_path / f"llava-{size}"
    LlavaConfig(vision_config=vision, text_config=Qwen2Config(**text), vision_feature_layer=-1).save_pretrained(folder)
    config = yaml.safe_load((ROOT / "jobs" / "llava.yaml").read_text())
    config["model_name_or_path"] = str(folder)
    config["deepspeed"] = str(ROOT / "deepspeed" / "zero3.json")
    path = tmp_path / f"llava-{size}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("size", "low", "high"), [("0.5b", 0.8e9, 1.0e9), ("7b", 7.5e9, 8.5e9)])
def test_memory_estimate_counts_real_architecture_without_weights(tmp_path, size, low, high):
    report = check_run(llava_run_config(tmp_path, size), 8)
    memory = report.memory
    assert memory.skipped is None and low < memory.params < high  # published sizes: 0.9B and 8B
    assert not list((tmp_path / f"llava-{size}").glob("*.safetensors"))  # nothing but the config
    # bf16 + Adam under ZeRO-3 on 8 GPUs, as DeepSpeed's estimate_zero3_model_states_mem_needs: 2 bytes a
    # parameter + 16 a trained one, partitioned 8 ways, + the largest layer's weights and grads gathered
    # whole (the token embedding); jobs/llava.yaml freezes the SigLIP-so400m tower (0.4B).
    assert 0.35e9 < memory.params - memory.trained < 0.45e9
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(tmp_path / f"llava-{size}").text_config
    assert memory.largest_layer == text.vocab_size * text.hidden_size
    expected = (2 * memory.params + 16 * memory.trained) / 8 + 4 * memory.largest_layer
    assert memory.total_gb == pytest.approx(expected / 1e9)


def test_zero2_memory_counts_deepspeeds_18_bytes_and_both_gradient_buckets(tmp_path):
    job = llava_run_config(tmp_path, "0.5b")
    memory = check_run(job, 2, deepspeed=ROOT / "deepspeed" / "zero2.json").memory
    zero = read_deepspeed(ROOT / "deepspeed" / "zero2.json")["zero_optimization"]
    assert zero["overlap_comm"] and isinstance(zero["reduce_bucket_size"], int)
    # estimate_zero2_model_states_mem_needs: 2 bytes a weight on every GPU + 18 a trained one, partitioned;
    # with overlap_comm DeepSpeed allocates two 16-bit buckets of reduce_bucket_size elements.
    buckets = 2 * 2 * zero["reduce_bucket_size"]
    assert memory.total_gb == pytest.approx((2 * memory.params + 18 * memory.trained / 2 + buckets) / 1e9)
    assert memory.buffers_gb == pytest.approx(buckets / 1e9)
    assert "buffers 0.8" in memory.line()


def test_memory_error_when_model_states_cannot_fit_and_warning_within_ten_percent(tmp_path):
    job = llava_run_config(tmp_path, "7b")
    one_gpu = check_run(job, 1, gpu_memory_gb=80)
    assert [p.key for p in one_gpu.errors] == ["zero_optimization.stage"]
    assert "GB per GPU, the GPU has 80 GB" in one_gpu.errors[0].detail
    eight = check_run(job, 8, gpu_memory_gb=80)
    assert eight.ok and not eight.warnings
    tight = check_run(job, 8, gpu_memory_gb=eight.memory.total_gb / 0.95)
    assert tight.ok and [p.key for p in tight.warnings] == ["zero_optimization.stage"]
    offload = tmp_path / "offload.json"
    ds = read_deepspeed(ROOT / "deepspeed" / "zero3.json")
    ds["zero_optimization"].update(offload_optimizer={"device": "cpu"}, offload_param={"device": "cpu"})
    offload.write_text(json.dumps(ds))
    offloaded = check_run(job, 1, deepspeed=offload, gpu_memory_gb=80).memory
    assert offloaded.total_gb == pytest.approx(4 * offloaded.largest_layer / 1e9)  # only the layer at work
    assert "memory:" in one_gpu.lines()[-2] and "per GPU of 80 GB" in one_gpu.lines()[-2]


def test_memory_of_uncached_hub_model_is_skipped_with_reason():
    report = check_run(ROOT / "jobs" / "seq2seq.yaml", 4, overrides=["--model_name_or_path", "vtt-tests/not-cached"])
    assert report.ok and "no local config for vtt-tests/not-cached" in report.memory.skipped


@pytest.mark.slow
def test_runtime_fails_where_check_names_the_key(demo_inputs, tmp_path):
    """The real thing: 2 processes under the deepspeed launcher stop where `vtt check` said they would."""
    ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
    ds["gradient_accumulation_steps"] = 2  # right for 1 GPU (global batch 4, micro batch 2), wrong for 2
    path = tmp_path / "ga-for-one-gpu.json"
    path.write_text(json.dumps(ds))
    overrides = [*tiny_run(demo_inputs, "seq2seq"), "--deepspeed", str(path), "--output_dir", str(tmp_path / "run")]
    overrides += ["--max_steps", "1"]
    assert check_run("jobs/tiny-seq2seq.yaml", 1, overrides=overrides).ok
    report = check_run("jobs/tiny-seq2seq.yaml", 2, overrides=overrides)
    assert [(p.key, p.value, p.expected) for p in report.errors] == [("gradient_accumulation_steps", 2, 1)]
    # Straight to the deepspeed launcher: `vtt run` would stop at its own pre-flight check, before the runtime.
    command = deepspeed_command(run_command("jobs/tiny-seq2seq.yaml", overrides), 2)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "ds gradient_accumulation_steps=2 vs hf gradient_accumulation_steps=1" in done.stdout + done.stderr


def test_check_leaves_no_cpu_accelerator_to_the_trainers_it_precedes(demo_inputs, monkeypatch):
    # `vtt run` checks, then starts the trainers with its environment: DS_ACCELERATOR=cpu left there put
    # DeepSpeed on the CPU in GPU jobs (ZeRO-3 failed at model load).
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    check_run(str(ROOT / "jobs" / "llava.yaml"), 2, overrides=tiny_run(demo_inputs, "llava"))
    assert "DS_ACCELERATOR" not in os.environ
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")  # a user's own choice stays
    check_run(str(ROOT / "jobs" / "llava.yaml"), 2, overrides=tiny_run(demo_inputs, "llava"))
    assert os.environ["DS_ACCELERATOR"] == "cuda"


def test_model_is_counted_beside_a_live_zero3_config(demo_inputs):
    # A trainer parses its ZeRO-3 run config (registered process-wide by transformers) before the
    # disk guard counts the model: counting must not start deepspeed.zero.Init.
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from vtt.config import parse_run_config
    from vtt.models.size import count_parameters

    expected = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"]).parameters())
    config = [str(ROOT / "jobs" / "llava.yaml"), *tiny_run(demo_inputs, "llava")]
    _, _, training = parse_run_config(["--config", *config], 1)
    assert is_deepspeed_zero3_enabled()
    assert count_parameters(AutoConfig.from_pretrained(demo_inputs["llava"]), "llava")[:2] == (expected, expected)
    assert is_deepspeed_zero3_enabled() and training.deepspeed  # still registered for the trainer


def test_memory_estimate_leaves_a_frozen_vision_tower_out_of_grads_and_optimizer(demo_inputs):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(demo_inputs["llava"])
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    config = str(ROOT / "jobs" / "llava.yaml")  # freeze_vision_tower: true, ZeRO-3, bf16
    frozen = check_run(config, 2, overrides=tiny_run(demo_inputs, "llava")).memory
    assert (frozen.params, frozen.trained) == (total, total - vision)
    assert frozen.params_gb == pytest.approx(2 * total / 2 / 1e9)  # every weight is still held
    assert frozen.optimizer_gb == pytest.approx(12 * (total - vision) / 2 / 1e9)
    assert frozen.grads_gb == pytest.approx(4 * (total - vision) / 2 / 1e9)  # ZeRO-3: fp32 grads only
    assert "trained" in frozen.line()
    trained = check_run(config, 2, overrides=[*tiny_run(demo_inputs, "llava"), "--freeze_vision_tower", "false"])
    assert trained.memory.trained == total
    assert trained.memory.grads_gb == pytest.approx(4 * total / 2 / 1e9)


def test_dataloader_settings_torch_refuses_are_found_before_the_job(demo_inputs):
    # jobs/llava.yaml keeps its 8 workers alive between epochs; with none, torch's DataLoader raises at step 0.
    job = str(ROOT / "jobs" / "llava.yaml")
    assert not [p for p in check_run(job, 1, overrides=tiny_run(demo_inputs, "llava")).errors if "dataloader" in p.key]
    report = check_run(job, 1, overrides=[*tiny_run(demo_inputs, "llava"), "--dataloader_num_workers", "0"])
    assert [(p.key, p.value) for p in report.errors] == [("dataloader_num_workers", 0)]
    line = report.errors[0].line("error", report.deepspeed)
    assert "jobs/llava.yaml: dataloader_num_workers=0" in line
    assert "persistent_workers option needs num_workers > 0" in line and "dataloader_persistent_workers false" in line


def test_zero2_buckets_of_hidden_size_squared_are_flagged_and_the_shipped_size_is_not(tmp_path):
    job = llava_run_config(tmp_path, "0.5b")
    auto = tmp_path / "zero2-auto.json"
    ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
    ds["zero_optimization"]["reduce_bucket_size"] = "auto"
    auto.write_text(json.dumps(ds))
    flagged = check_run(job, 1, deepspeed=auto)
    assert flagged.ok and [p.key for p in flagged.warnings] == ["zero_optimization.reduce_bucket_size"]
    line = flagged.lines()[0]
    assert '"auto" fills it with hidden_size² = 1,048,576' in line and "flushes" in line and "200000000" in line
    assert not check_run(job, 1, deepspeed=ROOT / "deepspeed" / "zero2.json").warnings
    assert not check_run(job, 2, deepspeed=ROOT / "deepspeed" / "zero3.json").warnings  # stage 3: not judged


def write_ds(tmp_path: Path, name: str, **changes) -> Path:
    """deepspeed/zero2.json with top-level blocks or keys replaced."""
    ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
    ds.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(ds))
    return path


def test_every_key_deepspeed_refuses_is_named_by_its_dotted_key(tmp_path):
    zero = dict(read_deepspeed(ROOT / "deepspeed" / "zero2.json")["zero_optimization"], reduce_bucket=5)
    blocks = {
        "compile": {"disable": True},
        "bf16": {"enabled": "auto", "loss_scale": 0},
        "fp16": {"enabled": "auto", "loss_scal": 0},
        "zero_optimization": zero,
    }
    # DeepSpeed itself refuses each one alone (it stops at the first block it validates).
    cases = []
    for name, block in blocks.items():
        ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
        ds[name] = block
        cases.append({"ds": ds, "args": {}, "world": 1, "gpus": 1, "nodes": 1})
    assert {v["stage"] for v in runtime_verdicts(cases, tmp_path)} == {"deepspeed"}

    report = check_run(None, 1, deepspeed=write_ds(tmp_path, "four", **blocks))
    found = {p.key: p for p in report.errors}
    assert set(found) == {"compile.disable", "bf16.loss_scale", "fp16.loss_scal", "zero_optimization.reduce_bucket"}
    assert all(p.source == "deepspeed" and p.fix.startswith("remove it") for p in found.values())
    assert found["fp16.loss_scal"].fix == "remove it (did you mean 'loss_scale'?)"
    assert "it takes" in found["compile.disable"].fix and "deepcompile" in found["compile.disable"].fix
    assert "has no such key in bf16" in found["bf16.loss_scale"].detail


def test_hard_coded_warmup_the_runtime_refuses_is_an_error_without_max_steps(tmp_path):
    scheduler = {"type": "WarmupLR", "params": {"warmup_min_lr": AUTO, "warmup_max_lr": AUTO, "warmup_num_steps": 50}}
    path = write_ds(tmp_path, "warmup", scheduler=scheduler)
    # warmup_steps 10 is a count: transformers fills max(1, 10) whatever the data's steps, and refuses 50.
    case = {"ds": read_deepspeed(path), "args": {"warmup_steps": 10}, "world": 1, "gpus": 1, "nodes": 1}
    (runtime,) = runtime_verdicts([case], tmp_path)
    assert (runtime["stage"], runtime["keys"]) == ("transformers", ["scheduler.params.warmup_num_steps"])
    report = check_run(None, 1, overrides=["--warmup_steps", "10"], deepspeed=path)
    assert [(p.key, p.value, p.expected) for p in report.errors] == [("scheduler.params.warmup_num_steps", 50, 10)]
    # A ratio of the steps: known once the data is loaded, so only a warning.
    ratio = check_run(None, 1, overrides=["--warmup_steps", "0.1"], deepspeed=path)
    assert ratio.ok and [p.key for p in ratio.warnings] == ["scheduler.params.warmup_num_steps"]


def test_warmup_that_is_not_a_positive_whole_number_is_refused_as_deepspeed_does(tmp_path):
    import torch
    from deepspeed.runtime.lr_schedules import WarmupLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="warmup_num_steps must be a positive integer"):
        WarmupLR(optimizer, warmup_num_steps=10.0)  # what deepspeed.initialize builds from the file
    scheduler = {"type": "WarmupLR", "params": {"warmup_max_lr": AUTO, "warmup_num_steps": 10.0}}
    report = check_run(
        None, 1, overrides=["--warmup_steps", "10"], deepspeed=write_ds(tmp_path, "w", scheduler=scheduler)
    )
    (problem,) = report.errors
    assert (problem.key, problem.source) == ("scheduler.params.warmup_num_steps", "deepspeed")
    assert "positive whole number, not 10.0" in problem.detail


@pytest.mark.parametrize("name", ["OneBitAdam", "OneBitLamb", "ZeroOneAdam"])
def test_optimizer_deepspeed_dropped_is_refused_with_adamw_as_the_fix(tmp_path, name):
    path = write_ds(tmp_path, name, optimizer={"type": name, "params": {"lr": AUTO}})
    report = check_run(None, 2, deepspeed=path)
    (problem,) = report.errors
    assert (problem.key, problem.value) == ("optimizer.type", name)
    assert "no 1-bit optimizers" in problem.detail and problem.fix == 'set "type": "AdamW"'
    adamw = write_ds(tmp_path, "adamw", optimizer={"type": "AdamW", "params": {"lr": AUTO}})
    assert check_run(None, 2, deepspeed=adamw).ok


def test_tensor_parallel_wider_than_the_job_is_refused(tmp_path):
    path = write_ds(tmp_path, "tp", tensor_parallel={"autotp_size": 4})
    (problem,) = check_run(None, 2, deepspeed=path).errors
    assert (problem.key, problem.value) == ("tensor_parallel.autotp_size", 4)
    assert "divides the 2 GPU(s): 1, 2" in problem.fix
    assert check_run(None, 4, deepspeed=path).ok
    assert [p.key for p in check_run(None, 6, deepspeed=path).errors] == ["tensor_parallel.autotp_size"]


def test_no_fp32_warning_where_accelerate_adds_the_precision_block_on_gpus(tmp_path):
    ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
    del ds["bf16"]
    path = tmp_path / "no-bf16.json"
    path.write_text(json.dumps(ds))
    # A GPU job: the Trainer's AcceleratorState adds {"bf16": {"enabled": true}} from bf16=true.
    gpu = check_run(None, 2, overrides=["--bf16", "true"], deepspeed=path)
    assert gpu.ok and not gpu.warnings and gpu.config["bf16"] == {"enabled": True}
    # On CPU nothing adds it: DeepSpeed trains in fp32, whatever the arguments say.
    cpu = check_run(None, 2, overrides=["--bf16", "true", "--use_cpu", "true"], deepspeed=path)
    assert [p.key for p in cpu.warnings] == ["bf16.enabled"] and "trains in fp32" in cpu.warnings[0].detail


def test_deepspeeds_own_log_lines_stay_out_of_the_report(tmp_path):
    # Both make DeepSpeedConfig log a warning (a deprecated key, an unaligned vocabulary).
    zero = dict(read_deepspeed(ROOT / "deepspeed" / "zero2.json")["zero_optimization"], cpu_offload=False)
    path = write_ds(tmp_path, "noisy", zero_optimization=zero, vocabulary_size=1001)
    done = subprocess.run(  # a process of its own: DeepSpeed is imported inside the check, as `vtt check` does
        [sys.executable, "-m", "vtt.cli", "check", "--deepspeed", str(path), "--gpus", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "memory: skipped (no run config (--config): no model to size)",
        f"{path} on 2 GPU(s): consistent",
    ]
    assert "[WARNING]" not in done.stderr


def test_check_puts_the_log_levels_back(tmp_path):
    import logging

    import deepspeed.utils.logging  # noqa: F401

    logging.getLogger("DeepSpeed").setLevel(logging.INFO)  # a trainer in this process would log as it chose
    check_run(None, 1, deepspeed=ROOT / "deepspeed" / "zero2.json")
    assert logging.getLogger("DeepSpeed").level == logging.INFO
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # DeepSpeed's own default


def test_preflight_prints_warnings_as_lines_not_reprs(tmp_path, capsys):
    """vtt render/submit/run print a check's warnings as `vtt check` does (they printed a Problem's repr)."""
    from vtt.cluster.jobs import preflight
    from vtt.cluster.profiles import load_profile, profile_path

    job = llava_run_config(tmp_path, "0.5b")
    auto = tmp_path / "zero2-auto.json"
    ds = read_deepspeed(ROOT / "deepspeed" / "zero2.json")
    ds["zero_optimization"]["reduce_bucket_size"] = "auto"
    auto.write_text(json.dumps(ds))
    preflight(load_profile(profile_path("local")), job, 1, overrides=["--deepspeed", str(auto)])
    printed = capsys.readouterr().err
    assert "Problem(" not in printed
    assert "vtt check: warning:" in printed and "zero_optimization.reduce_bucket_size" in printed
