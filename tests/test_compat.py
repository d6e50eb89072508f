"""Each patch of a dependency's private API (the `_compat` module of its layer) against the dependency as
installed: these fail when an upgrade changes what a patch relies on, so it is looked at again."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest

import vtt._compat as base_compat
from vtt.after import _compat as after_compat
from vtt.models import _compat as models_compat
from vtt.train import _compat as train_compat

MODULES = [base_compat, models_compat, train_compat, after_compat]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_each_patch_runs_on_the_version_it_was_written_for(module):
    for package, version in module.WRITTEN_FOR.items():
        installed = importlib.metadata.version(package)
        assert installed == version, (
            f"{package} is {installed}, {module.__name__} was written for {version}: check each of its patches "
            "against the new version, then update WRITTEN_FOR"
        )


def test_set_aside_deepspeed_config_is_gone_inside_and_back_after():
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    live = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert is_deepspeed_zero3_enabled()
    with models_compat.hf_deepspeed_config_set_aside():
        assert not is_deepspeed_zero3_enabled()
        HfDeepSpeedConfig({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 1})  # registers
    assert is_deepspeed_zero3_enabled(), "the ZeRO-3 config registered before the block must be back"
    del live


def test_deepspeed_builds_no_shared_memory_op_once_it_is_marked_incompatible():
    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op

    train_compat.disable_cpu_shared_memory_all_reduce()
    assert deepspeed.ops.__compatible_ops__[train_compat.SHM_OP] is False
    assert build_shm_op() is None


def test_accelerated_optimizer_holds_the_optimizer_that_steps_as_optimizer():
    import torch
    from accelerate import Accelerator

    weight = torch.nn.Parameter(torch.ones(2))
    inner = torch.optim.SGD([weight], lr=1.0)
    wrapped = Accelerator(cpu=True).prepare_optimizer(inner)
    assert wrapped is not inner
    calls = []

    def around(step):
        def counted(*a, **kw):
            calls.append(1)
            return step(*a, **kw)

        return counted

    assert train_compat.wrap_optimizer_step(wrapped, around)
    weight.grad = torch.ones(2)
    wrapped.step()
    assert calls == [1] and torch.equal(weight.detach(), torch.zeros(2))


def test_hub_network_errors_are_exception_classes_huggingface_hub_retries():
    from huggingface_hub.utils import _http

    errors = after_compat.hub_network_errors()
    assert errors and all(inspect.isclass(e) and issubclass(e, BaseException) for e in errors)
    assert inspect.signature(_http.http_backoff).parameters["retry_on_exceptions"].default == errors


def test_no_private_name_of_a_dependency_is_used_outside_the_compat_modules():
    import ast
    from pathlib import Path

    package = Path(train_compat.__file__).resolve().parents[1]
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module != "__future__"
                and not node.module.startswith("vtt")
                and (
                    any(p.startswith("_") for p in node.module.split("."))
                    or any(a.name[0] == "_" != a.name[1] for a in node.names)
                )
            ):
                found.append(f"{path.relative_to(package)}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in {"trainer", "hf_deepspeed", "deepspeed", "transformers"}:
                    found.append(f"{path.relative_to(package)}:{node.lineno} .{node.attr}")
    assert not found, found


def test_torchvision_imports_after_vtt_and_its_transforms_run_on_this_torch():
    """Without the guard a CPU torch cannot import PyPI's torchvision; when that import works unguarded
    (a CPU build of torchvision, or one that defines its ops itself), the guard must do nothing."""
    import subprocess
    import sys

    import torch

    bare = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    guarded = subprocess.run(
        [sys.executable, "-c", "import vtt, torch, torchvision.transforms.v2.functional as F; "
         "print(F.resize(torch.zeros(3, 8, 8), [4, 4]).shape, len(vtt._compat._defined))"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    if torch.version.cuda is None and bare.returncode != 0:
        assert "torchvision::nms does not exist" in bare.stderr, bare.stderr[-2000:]
        assert guarded.stdout.split()[-1] == "1"
    else:
        assert guarded.stdout.split()[-1] == "0", "torchvision loads unguarded: the guard must not define its ops"
