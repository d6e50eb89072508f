"""The throughput and profile callbacks, driven the way the Trainer drives them, on real timings."""

import time

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from vtt.train.throughput import ProfileCallback, ThroughputCallback, idle_gaps, kernel_kind, parse_steps


def drive(callbacks, args, steps: int, work_s: float, wait_s: float, tokens_per_step: int = 100) -> None:
    """A training loop: wait for data, then a step of `work_s` seconds of matmuls."""
    state, control = TrainerState(), TrainerControl()
    a = torch.randn(256, 256)
    for _ in range(steps):
        time.sleep(wait_s)  # the data loader
        for cb in callbacks:
            cb.on_step_begin(args, state, control)
        end = time.perf_counter() + work_s
        while time.perf_counter() < end:
            a = torch.tanh(a @ a)
        state.global_step += 1
        state.num_input_tokens_seen += tokens_per_step
        for cb in callbacks:
            cb.on_step_end(args, state, control)


def test_data_wait_share_and_tokens_per_second_follow_the_step_timings(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    throughput = ThroughputCallback(skip_steps=1)
    drive([throughput], args, steps=6, work_s=0.06, wait_s=0.02)
    summary = throughput.summary(world_size=1)
    assert summary["steps"] == 6
    assert 0.15 < summary["data_wait_share"] < 0.4  # 0.02 of every 0.08 s
    assert 0.07 < summary["step_s"] < 0.12
    assert 800 < summary["tokens_per_second_per_gpu"] < 1400  # 100 tokens a 0.08 s step


def test_profile_callback_writes_where_the_time_of_the_chosen_steps_went(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    drive([ProfileCallback("2-3")], args, steps=5, work_s=0.05, wait_s=0.0)
    text = (tmp_path / "profile-rank0.txt").read_text()
    first = text.splitlines()[0]
    assert first.startswith("2 step(s)")
    assert "matmul" in text and "aten::mm" in text  # the loop's work, named and sorted into its kind
    wall = float(first.split(",")[1].split()[0])
    assert 0.09 < wall < 0.5  # two steps of 0.05 s, not the whole loop


def test_profile_steps_must_be_a_range_from_one():
    assert parse_steps("6-8") == (6, 8)
    assert parse_steps("4") == (4, 4)
    for bad in ("0-2", "5-3", "six"):
        with pytest.raises(ValueError, match="VTT_PROFILE_STEPS"):
            parse_steps(bad)


def test_kernel_kinds_of_known_gpu_kernels():
    assert kernel_kind("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "attention"
    assert kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert kernel_kind("ncclDevKernel_AllReduce_Sum_bf16_RING_LL") == "communication"
    assert kernel_kind("multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor>") == "optimizer"
    assert kernel_kind("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>") == "elementwise/other"


def test_idle_gaps_name_what_the_cpu_was_doing_while_no_kernel_ran():
    from types import SimpleNamespace as Event

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(device, start, end, name, stack=()):
        return Event(device_type=device, time_range=Event(start=start, end=end), name=name, stack=list(stack))

    events = [
        event(cuda, 0, 100, "gemm"),
        event(cuda, 150, 200, "gemm"),  # a 50 us pause: below the threshold
        event(cuda, 3200, 3300, "gemm"),
        event(cpu, 0, 3250, "Optimizer.step"),
        event(cpu, 1000, 2500, "aten::item", ["/v/site-packages/trl/trainer/sft_trainer.py(1643): compute_loss"]),
    ]
    lines = idle_gaps(events)
    assert "1, 0.003 s in all" in lines[1]
    assert "3.00 ms  Optimizer.step > aten::item" in lines[2]
    assert "sft_trainer.py(1643)" in lines[3]


def test_profile_window_cut_short_by_the_end_of_training_is_still_written(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    profile = ProfileCallback("3-10")
    drive([profile], args, steps=4, work_s=0.02, wait_s=0.0)
    assert not (tmp_path / "profile-rank0.txt").exists()  # still recording: steps 3 and 4 of 3-10
    profile.on_train_end(args, TrainerState(global_step=4), TrainerControl())
    assert (tmp_path / "profile-rank0.txt").read_text().startswith("2 step(s)")
