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
    import sysconfig

    import torch

    # -S: site-packages without its .pth files, so without the start-up guard make setup wrote
    unguarded = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r}); import torchvision"
    bare = subprocess.run([sys.executable, "-S", "-c", unguarded], capture_output=True, text=True)
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


def test_a_python_that_never_imports_vtt_still_imports_the_video_processors():
    """A user's script, or a subprocess, importing transformers' video processors first: the start-up
    guard make setup wrote (vtt._compat.install_startup_guard) is what lets torchvision import beside a CPU torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from transformers import Qwen2VLVideoProcessor\n"
        "import torchvision.transforms.v2.functional\n"
        "print('vtt' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from vtt.models.tiny_video import build_tiny_vlm

    return build_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "tiny")


def _tower_backward(folder, freeze: bool) -> dict:
    """Gradient checkpointing enabled the way the Trainer does; one backward through the tower's output."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vtt.models.families import family_of, freeze_vision_tower

    model = AutoModelForImageTextToText.from_pretrained(folder)
    tower = model.model.visual
    if freeze:
        freeze_vision_tower(model, family_of(model.config))
    else:
        tower.requires_grad_(False)
        tower.merger.requires_grad_(True)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    reached = []
    tower.blocks[0].register_full_backward_hook(lambda *_: reached.append("block 0"))
    grid = torch.tensor([[2, 4, 4]])  # 2 temporal x 4 x 4 patches
    patch = tower.patch_embed
    pixels = torch.randn(int(grid.prod()), 3 * patch.temporal_patch_size * patch.patch_size**2)
    model.train()
    out = tower(pixels, grid_thw=grid)
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    features.float().pow(2).sum().backward()
    return {"reached": reached, "merger_grad": tower.merger.mlp[0].weight.grad is not None,
            "hooked": bool(patch._forward_hooks)}  # fmt: skip


def test_a_frozen_tower_gets_no_backward_under_gradient_checkpointing(tiny_qwen):
    frozen = _tower_backward(tiny_qwen, freeze=True)
    assert frozen == {"reached": [], "merger_grad": True, "hooked": False}


def test_transformers_still_hooks_a_vision_towers_patch_embedding_for_input_grads(tiny_qwen):
    """What models/_compat.no_input_grads_into undoes: when this fails, transformers stopped hooking the
    tower (the patch may go) or hooks it another way (the patch must follow)."""
    plain = _tower_backward(tiny_qwen, freeze=False)
    assert plain["hooked"] and plain["reached"] == ["block 0"] and plain["merger_grad"]
