"""TORCH_CUDA_ARCH_LIST as NVIDIA images set it ("9.0a") against DeepSpeed 0.19.8's own op builder."""

from __future__ import annotations

import pytest
from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

from vtt.train.environment import fix_arch_list, job_environment, normal_arch_list


def test_deepspeed_crashes_on_9_0a_and_compiles_for_the_list_vtt_gives_it(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    with pytest.raises(ValueError, match="invalid literal for int"):
        FusedAdamBuilder().compute_capability_args()  # the crash NOTES.md saw on the H100 machine
    assert fix_arch_list() == "8.0;9.0"
    flags = FusedAdamBuilder().compute_capability_args()
    assert "-gencode=arch=compute_80,code=sm_80" in flags and "-gencode=arch=compute_90,code=sm_90" in flags


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("9.0a", "9.0"),
        ("8.0 9.0a 9.0", "8.0;9.0"),
        ("10.0f+PTX;12.0a", "10.0+PTX;12.0"),
        ("8.0;8.6+PTX", "8.0;8.6+PTX"),
    ],
)
def test_arch_list_keeps_what_deepspeed_parses_and_drops_only_letter_suffixes(given, expected):
    assert normal_arch_list(given) == expected


def test_launcher_environment_carries_the_normalised_list_and_leaves_others_alone():
    env = job_environment({"TORCH_CUDA_ARCH_LIST": "9.0a", "HF_HOME": "/shared/hf"})
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["HF_HOME"] == "/shared/hf"
    assert "TORCH_CUDA_ARCH_LIST" not in job_environment({"PATH": "/bin"})
