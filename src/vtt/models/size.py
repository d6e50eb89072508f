"""The size of the model a trainer builds and what of it trains, from its config alone: built on the
meta device, no weights read, no network. The pre-flight check (memory) and the disk guard (checkpoint
size) count with it; the llava trainer freezes with the same function the check counts with.

    from vtt.models.size import parameter_count, parameter_counts
    parameter_count("outputs/demo/models/tiny-llava", "llava")
    parameter_counts("outputs/demo/models/tiny-llava", "llava", task)   # with the run's adapter (use_peft)

With use_peft the meta model gets the run's adapter from vtt.models.adapters.wrap, the function the
trainers call (peft builds its LoRA layers on meta tensors too), so the trainable count is peft's own:
the LoRA (DoRA) matrices and the full copies of lora_modules_to_save. With load_in_4bit/8bit the linear
weights bitsandbytes would replace are counted as transformers picks them (replace_with_bnb_linear:
every nn.Linear but the output embeddings, the last module, tied weights and _keep_in_fp32_modules).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

from vtt.models._compat import hf_deepspeed_config_set_aside
from vtt.models.adapters import AUTO_CLASSES
from vtt.models.families import family_of, freeze_vision_tower


@dataclass(frozen=True)
class AdapterCount:
    """What the run's adapter adds to the model, and how its base is held."""

    method: str  # LoRA, DoRA or rsLoRA
    r: int
    modules: int  # layers that got an adapter (peft's LoraLayer)
    saved: int  # parameters of the trainable full copies of lora_modules_to_save
    bits: int = 16  # the base's quantised linear weights: 4 (load_in_4bit), 8 (load_in_8bit) or 16 (none)
    quantised: int = 0  # parameters of the linear weights bitsandbytes replaces (0 without load_in_4bit/8bit)
    quantised_rows: int = 0  # their output rows (8-bit keeps one fp32 scale a row)
    nested: bool = False  # use_bnb_nested_quant: the 4-bit absmax quantised again


class ParameterCount(NamedTuple):
    total: int
    trained: int
    largest_layer: int  # the most parameters one module holds itself: what ZeRO-3 gathers at once
    adapter: AdapterCount | None = None  # with use_peft: total and trained are the wrapped model's
    largest_trained: int | None = None  # the most trained parameters one module holds itself (its grads gathered)


class AdapterError(ValueError):
    """peft refuses the run's adapter settings for this model (lora_target_modules that match nothing, ...)."""


def count_parameters(config, trainer: str | None, vision_frozen: bool = False, task=None) -> ParameterCount:
    """All, trained and largest-layer parameters of the model `trainer` builds from `config` (wrapped with the
    run's adapter when task.use_peft, as the trainers wrap it)."""
    import torch
    import transformers

    auto = getattr(transformers, AUTO_CLASSES.get(trainer or "", "AutoModel"))
    adapter = None
    # peft's layers are built inside the block too: on meta, where the base layers are (no init on a CPU)
    with torch.device("meta"), hf_deepspeed_config_set_aside():
        model = auto.from_config(config)
        if vision_frozen:
            freeze_vision_tower(model, family_of(config))
        if task is not None and task.use_peft:
            model, adapter = _adapt(model, task, trainer or "")
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # as DeepSpeed's estimate_zero3_model_states_mem_needs_all_live counts it
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    largest_trained = max(
        (sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad) for m in model.modules()), default=0
    )
    return ParameterCount(total, trained, largest, adapter, largest_trained)


def _adapt(model, task, trainer: str):
    """(wrapped model, AdapterCount): vtt.models.adapters.wrap on the meta model, and what it added."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    from vtt.models import adapters

    bits = 4 if task.load_in_4bit else 8 if task.load_in_8bit else 16
    quantised, rows = quantised_linear(model) if bits < 16 else (0, 0)
    try:
        with warnings.catch_warnings():  # peft asks the deprecated is_gradient_checkpointing: nothing a user can change
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = adapters.wrap(model, task, trainer)
    except ValueError as err:  # peft's own words: "Target modules {...} not found in the base model"
        raise AdapterError(str(err).strip().splitlines()[0][:300]) from None
    method = "DoRA" if task.use_dora else "rsLoRA" if task.use_rslora else "LoRA"
    modules = sum(1 for m in model.modules() if isinstance(m, LoraLayer))
    saved = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, ModulesToSaveWrapper)
        for p in m.modules_to_save.parameters()
    )
    nested = bits == 4 and bool(task.use_bnb_nested_quant)
    return model, AdapterCount(method, task.lora_r, modules, saved, bits, quantised, rows, nested)


def quantised_linear(model) -> tuple[int, int]:
    """(parameters, output rows) of the linear weights transformers' bitsandbytes quantizer replaces in `model`:
    every nn.Linear (and GPT-2's Conv1D) that `get_modules_to_not_convert` leaves in (written for transformers
    5.24.0: Bnb4BitHfQuantizer._process_model_before_weight_loading -> replace_with_bnb_linear; TRL's
    get_quantization_config sets no llm_int8_skip_modules). Their biases stay in 16 bits."""
    import torch
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    weights = rows = 0
    for name, module in model.named_modules():
        if (type(module) is torch.nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skip):
            weights += module.weight.numel()
            rows += module.weight.shape[1] if isinstance(module, Conv1D) else module.out_features
    return weights, rows


def adapter_key(task) -> tuple | None:
    """The run's adapter settings as a hashable key (None without use_peft), for the cache below."""
    from vtt.config import ADAPTER_FIELDS

    if task is None or not task.use_peft:
        return None
    return tuple((name, _hashable(getattr(task, name))) for name in ADAPTER_FIELDS)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def human(count: int) -> str:
    """1234 -> 1.2k, 40_371_200 -> 40.4M, 8.1e9 -> 8.1B."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def trainable_line(counts: ParameterCount) -> str:
    """`trainable 40.0M of 8.2B parameters (0.49%), LoRA r=16 on 224 modules` for `vtt check`."""
    total, trained, adapter = counts.total, counts.trained, counts.adapter
    line = f"trainable {human(trained)} of {human(total)} parameters ({100 * trained / max(total, 1):.2f}%)"
    if adapter is None:
        return line
    line += f", {adapter.method} r={adapter.r} on {adapter.modules} modules"
    if adapter.saved:
        line += f" + {human(adapter.saved)} in full copies (lora_modules_to_save)"
    if adapter.bits < 16:
        line += f", {human(adapter.quantised)} base weights in {adapter.bits} bits"
        line += " (nested quantisation)" if adapter.nested else ""
    return line


@functools.lru_cache(maxsize=8)  # the pre-flight check and the save guard both ask at start
def _counts(model_name_or_path: str, trainer: str, key: tuple | None) -> ParameterCount:
    from transformers import AutoConfig

    task = None if key is None else SimpleNamespace(**{k: list(v) if isinstance(v, tuple) else v for k, v in key})
    return count_parameters(AutoConfig.from_pretrained(model_name_or_path), trainer, task=task)


def parameter_counts(model_name_or_path: str, trainer: str, task=None) -> ParameterCount:
    """ParameterCount of the model in a local folder or a cached hub id (its config.json only), with the run's
    adapter when task.use_peft."""
    return _counts(model_name_or_path, trainer, adapter_key(task))


def parameter_count(model_name_or_path: str, trainer: str) -> int:
    """Parameters of the model in a local folder or a cached hub id (its config.json only)."""
    return parameter_counts(model_name_or_path, trainer).total
