"""The environment a training process gets: what vtt's launcher sets, and what a trainer repairs at start.

    python -c "from vtt.train.environment import normal_arch_list; print(normal_arch_list('8.0;9.0a'))"   # 8.0;9.0

DeepSpeed 0.19.8 compiles its ops against TORCH_CUDA_ARCH_LIST and parses every entry as
`major.minor[+PTX]`: the `9.0a` that NVIDIA's images set on H100 machines crashes the build with
`ValueError: invalid literal for int() with base 10: '0a'` (NOTES.md). sm_90 code runs on sm_90a GPUs,
so dropping the letter suffix loses nothing DeepSpeed's ops use.

`prepare_deepspeed` also switches off DeepSpeed's CPU shared-memory all-reduce (vtt.train._compat says why).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping

from vtt.train._compat import disable_cpu_shared_memory_all_reduce

ARCH_SUFFIX = re.compile(r"^(\d+\.\d+)[a-zA-Z]+(\+PTX)?$")


def normal_arch_list(value: str) -> str:
    """`value` with architecture suffixes dropped ("9.0a" -> "9.0", "10.0f+PTX" -> "10.0+PTX"), duplicates removed."""
    entries = []
    for entry in value.replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        match = ARCH_SUFFIX.match(entry)
        entry = match.group(1) + (match.group(2) or "") if match else entry
        if entry not in entries:
            entries.append(entry)
    return ";".join(entries)


def fix_arch_list(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Rewrite TORCH_CUDA_ARCH_LIST in `env` (this process's environment by default) to a form DeepSpeed parses."""
    value = env.get("TORCH_CUDA_ARCH_LIST")
    if value is None:
        return None
    env["TORCH_CUDA_ARCH_LIST"] = normal_arch_list(value)
    return env["TORCH_CUDA_ARCH_LIST"]


def prepare_deepspeed() -> None:
    """What a trainer does before DeepSpeed starts: a parsable arch list, no CPU shared-memory all-reduce."""
    fix_arch_list()
    disable_cpu_shared_memory_all_reduce()


def job_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: os.environ) for a training process: unbuffered output, a parsable arch list."""
    env = dict(os.environ if base is None else base, PYTHONUNBUFFERED="1")
    fix_arch_list(env)
    return env
