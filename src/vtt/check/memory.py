"""Model-state memory per GPU for `vtt check`: DeepSpeed's own accounting (estimate_zero2/zero3) with
frozen parameters and ZeRO's gradient buckets counted, set against the GPU's memory.

With an adapter (use_peft) the same accounting runs on the wrapped model (vtt.models.size counts it):
P parameters in all, T of them trained (the LoRA/DoRA matrices and the full copies of
lora_modules_to_save), N GPUs, w = 2 bytes a weight under bf16/fp16 (deepspeed 0.19's
engine._cast_module_mixed_precision casts every float parameter, the adapter too, to that dtype), 4
under fp32:

    params    = w·P                        / N under ZeRO-3 (zero.Init partitions the frozen weights too)
    grads     = (2 + 4)·T  (4·T at ZeRO-3) / N under ZeRO-2 and 3     (fp32: 4·T)
    optimizer = 12·T: fp32 master + Adam's two moments / N under ZeRO-1 to 3   (fp32: 8·T)
    buffers   = ZeRO-1/2's reduce buckets, as without an adapter (allocated whole); ZeRO-3's gathered
                layer: w·(largest layer + largest trained layer), a frozen layer having no grads

QLoRA (load_in_4bit): of P, the Q weights of the linear layers that bitsandbytes replaces (as transformers
picks them: every nn.Linear but lm_head / tied / _keep_in_fp32_modules; vision tower and projector
included) are held packed, 2 to a byte, with their quantisation state; everything else (embeddings,
lm_head, norms, biases, the adapter) stays at w bytes:

    params    = (0.5 + 4/64)·Q + w·(P - Q)                       one fp32 absmax per block of 64 weights
    params    = (0.5 + 1/64 + 4/(64·256))·Q + w·(P - Q)          use_bnb_nested_quant: the absmax in 8 bits,
                                                                 one fp32 absmax per 256 of those
    (load_in_8bit: 1·Q + 4·rows + w·(P - Q): int8 weights and one fp32 scale per output row)

plus a 16-value fp32 code per layer (and 256 with nested quantisation): well under 1 MB, left out. These
are bitsandbytes 0.50's numbers (quantize_4bit's blocksize 64, quantize_blockwise's 256 for the nested
absmax). Under ZeRO-3 the quantised base is counted whole on every GPU, not partitioned (a warning says
why: quantised_zero3_warnings). Left out as well: peft's prepare_model_for_kbit_training casts the
non-quantised parts to fp32 (4 bytes) before DeepSpeed casts them back, a peak at the model's load.

Without DeepSpeed (`deepspeed: null`, `--deepspeed ''`: the Trainer's own AdamW, DDP on several GPUs) nothing is
cast or partitioned: every GPU holds the whole model as it loaded, in the checkpoint's dtype (transformers 5's
dtype="auto": w = 2 for a bf16 checkpoint, whatever `bf16` says, which only turns autocast on), and every tensor
of a trained parameter is in that parameter's dtype:

    params    = w·(P - T) + t                  t: the trained parameters' bytes: w·T for a full fine-tune; with
                                               an adapter 4 a LoRA/DoRA weight (peft's autocast_adapter_dtype)
                                               and w a lora_modules_to_save copy
    grads     = t
    optimizer = 2·t                            torch's AdamW: exp_avg and exp_avg_sq like their parameter
    buffers   = t on 2 or more GPUs            DDP's buckets, a copy of every gradient (gradient_as_bucket_view
                                               is off in accelerate's DDP kwargs)

QLoRA without DeepSpeed: prepare_model_for_kbit_training leaves its fp32 casts in place, so the base's
non-quantised parts and the modules_to_save copies are 4 bytes a weight beside the quantised Q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vtt.check.rules import Problem
from vtt.models.size import AdapterCount, ParameterCount, count_parameters

MEMORY_MARGIN = 0.10  # model states within 10% of the GPU's memory leave no room for activations: warn


@dataclass
class MemoryEstimate:
    """Model-state memory per GPU (params, grads, optimizer states), in GB (1e9 bytes)."""

    model: str
    params: int | None = None
    trained: int | None = None  # fewer than params when part of the model is frozen
    adapter: str | None = None  # with use_peft: "LoRA r=16", "LoRA r=16 on a 4-bit base"
    largest_layer: int | None = None  # parameters of the biggest single module (ZeRO-3 gathers it whole)
    stage: int = 0
    zero: bool = True  # False: no DeepSpeed, each GPU holds the whole model (estimate_plain_memory)
    world: int = 1
    offload_optimizer: str = "none"
    offload_param: str = "none"
    params_gb: float = 0.0
    grads_gb: float = 0.0
    optimizer_gb: float = 0.0
    buffers_gb: float = 0.0  # ZeRO's working buffers: gradient buckets (stage 1-2), the largest layer gathered (3)
    gpu_memory_gb: float | None = None
    skipped: str | None = None  # why there is no estimate

    @property
    def total_gb(self) -> float:
        return self.params_gb + self.grads_gb + self.optimizer_gb + self.buffers_gb

    def line(self) -> str:
        if self.skipped:
            return f"memory: skipped ({self.skipped})"
        offload = ", ".join(
            f"{what} offloaded to {dev}"
            for what, dev in (("optimizer", self.offload_optimizer), ("params", self.offload_param))
            if dev != "none"
        )
        against = f" of {self.gpu_memory_gb:g} GB" if self.gpu_memory_gb else " (no GPU memory given: --gpu-memory)"
        frozen = (
            f" ({self.trained / 1e9:.2f}B trained)" if self.trained is not None and self.trained < self.params else ""
        )
        if self.adapter:
            frozen = f" ({self.trained / 1e6:.1f}M trained: {self.adapter})"
        where = f"ZeRO-{self.stage} on {self.world} GPU(s)" if self.zero else f"no DeepSpeed on {self.world} GPU(s)"
        return (
            f"memory: {self.model}: {self.params / 1e9:.2f}B params{frozen}, {where}"
            f"{', ' + offload if offload else ''}: model states {self.total_gb:.1f} GB per GPU{against} "
            f"(params {self.params_gb:.1f} + grads {self.grads_gb:.1f} + optimizer {self.optimizer_gb:.1f}"
            f" + buffers {self.buffers_gb:.1f})"
        )


MAX_BUCKET_FLUSHES = 100  # per backward pass; hidden_size² buckets give ~450 on a 0.5B model
DEEPSPEED_BUCKET = 5e8  # DeepSpeed's reduce_bucket_size where the file sets none


def reduce_bucket(zero: dict) -> float:
    """Elements in one ZeRO-1/2 gradient bucket, as DeepSpeed will allocate it."""
    bucket = zero.get("reduce_bucket_size", DEEPSPEED_BUCKET)
    return bucket if isinstance(bucket, (int, float)) and bucket > 0 else DEEPSPEED_BUCKET


def bucket_warnings(written: dict, filled: dict, trained: int) -> list[Problem]:
    """ZeRO-1/2 buckets so small that the backward pass stalls on their flushes (bench/RESULTS.md)."""
    zero, filled_zero = written.get("zero_optimization") or {}, filled.get("zero_optimization") or {}
    if filled_zero.get("stage") not in (1, 2):
        return []
    bucket = reduce_bucket(filled_zero)
    flushes = trained / bucket
    if flushes <= MAX_BUCKET_FLUSHES:
        return []
    written_value = zero.get("reduce_bucket_size", bucket)
    how = f' ("auto" fills it with hidden_size² = {bucket:,.0f})' if written_value == "auto" else ""
    detail = (
        f"{trained:,} trained parameters in buckets of {bucket:,.0f} elements{how} are ~{flushes:,.0f} flushes"
        " in every backward pass, each a round of Python and small copies while the GPU waits"
    )
    fix = "set it to 200000000 (as deepspeed/zero2.json): two such buckets take 0.8 GB"
    return [Problem("zero_optimization.reduce_bucket_size", written_value, None, fix, "vtt", detail)]


def model_parameters(
    name: str, trainer: str | None, vision_frozen: bool = False, task: Any = None
) -> tuple[ParameterCount | None, Any, str | None]:
    """(parameter counts, model config, why not) from the model's config alone: built on the meta device,
    no weights read, no network (a hub id must be in the local cache); wrapped with the run's adapter when
    task.use_peft (vtt.models.size.AdapterError when peft refuses it)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except OSError:  # a hub id that is not in the local cache: the check never downloads
        return None, None, f"no local config for {name}: not a folder, not in the Hugging Face cache"
    except Exception as err:  # e.g. ValueError for a model type this transformers does not know
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, None, f"no usable config for {name}: {first[:160]}"
    return count_parameters(config, trainer, vision_frozen, task), config, None


def estimate_memory(counts, config: dict, args: Any, world: int) -> MemoryEstimate:
    """Model-state memory per GPU at its peak (the optimizer step), as DeepSpeed's estimators count it
    (`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`), with two things
    they leave out: frozen parameters (their 16-bit weights only: no grads, no optimizer states) and the
    gradient buckets of stages 1-2. Mixed precision with Adam, per trained parameter: 16-bit grads (2,
    stages 0-2), the fp32 grads the step reads (4), fp32 master weights and two moments (12); stage 1
    partitions the optimizer states, 2 the grads too, 3 the weights too. What is offloaded leaves the GPU.

    With an adapter, the module docstring's formulas: the same on the wrapped model, and a quantised base.

    counts: vtt.models.size.ParameterCount; config: the DeepSpeed config with its "auto" values filled.
    """
    params, trained, largest, adapter, largest_trained = counts
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero.get("stage", 0), int) else 0
    off_opt = (zero.get("offload_optimizer") or {}).get("device") or "none"
    off_par = (zero.get("offload_param") or {}).get("device") or "none"
    half = bool(args.bf16 or args.fp16)
    weight = 2 if half else 4
    grad_bytes = (4 if stage >= 3 else 2 + 4) if half else 4
    quantised = adapter is not None and adapter.bits < 16
    if quantised:  # whole on every GPU at any stage (quantised_zero3_warnings)
        params_b = quantised_bytes(adapter) + weight * (params - adapter.quantised)
    else:
        params_b = weight * params / (world if stage >= 3 else 1)
    grads_b = grad_bytes * trained / (world if stage >= 2 else 1)
    optim_b = (12 if half else 8) * trained / (world if stage >= 1 else 1)
    if stage >= 3:  # each layer's full weights and grads while it runs (a frozen layer has no grads)
        buffers_b = weight * (largest + (largest if largest_trained is None else largest_trained))
    elif stage >= 1:  # reduce buckets: two when communication overlaps the backward pass
        # allocated whole, however small the model
        buffers_b = weight * reduce_bucket(zero) * (2 if zero.get("overlap_comm") else 1)
    else:
        buffers_b = 0.0
    if off_opt != "none" and stage >= 1:  # ZeRO-Offload: the fp32 optimizer step, and the grads it needs, on the CPU
        optim_b = grads_b = 0.0
    if off_par != "none" and stage >= 3 and not quantised:  # bitsandbytes' weights stay on their GPU
        params_b = 0.0
    return _estimate(
        counts,
        stage=stage,
        world=world,
        offload_optimizer=off_opt,
        offload_param=off_par,
        params_gb=params_b / 1e9,
        grads_gb=grads_b / 1e9,
        optimizer_gb=optim_b / 1e9,
        buffers_gb=buffers_b / 1e9,
    )


def _estimate(counts: ParameterCount, **sizes: Any) -> MemoryEstimate:
    """A MemoryEstimate of the counted model (its name is set by the caller)."""
    adapter = adapter_label(counts.adapter)
    return MemoryEstimate(
        model="",
        params=counts.total,
        trained=counts.trained,
        adapter=adapter,
        largest_layer=counts.largest_layer,
        **sizes,
    )


def load_dtype(model_config: Any) -> Any:
    """The torch dtype from_pretrained gives the weights (transformers 5's dtype="auto": the checkpoint's config;
    float32 where it names none)."""
    import torch

    for config in (model_config, getattr(model_config, "text_config", None)):
        dtype = getattr(config, "dtype", None)
        dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if isinstance(dtype, torch.dtype):
            return dtype
    return torch.float32


def estimate_plain_memory(counts: ParameterCount, weight: int, world: int) -> MemoryEstimate:
    """Model-state memory per GPU at the optimizer step of a run without DeepSpeed (the module docstring's
    formulas): the whole model on every GPU in the dtype it loads in (`weight` bytes a weight)."""
    params, trained, _, adapter, _ = counts
    quantised = adapter is not None and adapter.bits < 16
    kept = 4 if quantised else weight  # a weight prepare_model_for_kbit_training cast to fp32, or as loaded
    # an adapter's LoRA/DoRA weights are fp32 (peft's autocast_adapter_dtype), its full copies as kept
    trained_b = weight * trained if adapter is None else 4 * (trained - adapter.saved) + kept * adapter.saved
    frozen = params - trained
    frozen_b = quantised_bytes(adapter) + kept * (frozen - adapter.quantised) if quantised else weight * frozen
    return _estimate(
        counts,
        zero=False,
        world=world,
        params_gb=(frozen_b + trained_b) / 1e9,
        grads_gb=trained_b / 1e9,
        optimizer_gb=2 * trained_b / 1e9,
        buffers_gb=(trained_b if world > 1 else 0) / 1e9,
    )


def sixteen_bit_warnings(counts: ParameterCount, dtype: Any, args: Any, file: str) -> list[Problem]:
    """A full fine-tune without DeepSpeed of a 16-bit checkpoint updates the 16-bit weights themselves."""
    import torch

    if counts.adapter is not None or not counts.trained or dtype not in (torch.bfloat16, torch.float16):
        return []
    rounds_away = 2 / torch.finfo(dtype).eps  # an update under half a unit in the last place is lost
    name = str(dtype).removeprefix("torch.")
    detail = (
        f"the weights load in {name} (the checkpoint's dtype) and, without DeepSpeed, AdamW updates those "
        f"{name} weights in place: no fp32 master copy, so a step smaller than 1/{rounds_away:g} of its weight is "
        f"rounded away (Adam's steps are about the learning rate: {args.learning_rate:g} here)"
    )
    fix = (
        "name a DeepSpeed file (deepspeed/zero2.json keeps fp32 master weights; zero3.json also partitions them), "
        "or train an adapter (use_peft: its weights are fp32)"
    )
    return [Problem("deepspeed", None, None, fix, "vtt", detail, file)]


# bitsandbytes 0.50: quantize_4bit's blocks of 64 weights, each with an fp32 absmax; nested
# (compress_statistics), the absmax itself in 8 bits by quantize_blockwise in blocks of 256, each with an fp32 absmax.
BNB_BLOCK, BNB_NESTED_BLOCK = 64, 256


def quantised_bytes(adapter: AdapterCount) -> float:
    """Bytes of the base's quantised linear weights with their quantisation state (module docstring)."""
    if adapter.bits == 8:  # Int8Params: int8 weights + SCB, one fp32 scale per output row
        return adapter.quantised + 4 * adapter.quantised_rows
    absmax = 1 / BNB_BLOCK + 4 / (BNB_BLOCK * BNB_NESTED_BLOCK) if adapter.nested else 4 / BNB_BLOCK
    return (0.5 + absmax) * adapter.quantised


def adapter_label(adapter: AdapterCount | None) -> str | None:
    if adapter is None:
        return None
    base = f" on a {adapter.bits}-bit base" if adapter.bits < 16 else ""
    return f"{adapter.method} r={adapter.r}{base}"


def quantised_zero3_warnings(counts: ParameterCount, filled: dict, task: Any) -> list[Problem]:
    """QLoRA (load_in_4bit/8bit) under ZeRO-3: the estimate does not partition the quantised base, and why."""
    adapter = counts.adapter
    stage = (filled.get("zero_optimization") or {}).get("stage")
    if adapter is None or adapter.bits == 16 or stage != 3:
        return []
    storage = getattr(task, "bnb_4bit_quant_storage", None)
    # transformers 5.24.0 modeling_utils.py:1435 and get_init_context: no zero.Init for a quantised model.
    detail = (
        f"load_in_{adapter.bits}bit: the estimate counts the quantised base whole on every GPU, not partitioned: "
        "transformers loads a quantised model without deepspeed.zero.Init (every process puts all of it on its "
        "GPU), and bitsandbytes' quantisation state (absmax) is no parameter for ZeRO-3 to partition"
    )
    if adapter.bits == 4 and storage not in ("bfloat16", "float16", "float32"):
        detail += (
            f"; bnb_4bit_quant_storage is {storage or 'unset (uint8)'}: PEFT's ZeRO-3 QLoRA recipe sets it to "
            "bfloat16 (and loads the model in it) for ZeRO-3 to handle the packed weights at all"
        )
    fix = (
        "use ZeRO-2 (deepspeed/zero2.json), which never partitions a frozen base and costs a LoRA run little, "
        "or drop load_in_4bit to have ZeRO-3 partition a 16-bit base"
    )
    return [Problem("zero_optimization.stage", stage, None, fix, "vtt", detail)]


def memory_problems(memory: MemoryEstimate, file: str = "") -> tuple[list[Problem], list[Problem]]:
    """Model states over the GPU's memory (an error), or within MEMORY_MARGIN of it (a warning)."""
    if memory.skipped or not memory.gpu_memory_gb:
        return [], []
    total, have = memory.total_gb, memory.gpu_memory_gb
    detail = f"model states alone need {total:.1f} GB per GPU, the GPU has {have:g} GB"
    if memory.zero:
        fix = "use more GPUs, a higher ZeRO stage, or offload (zero_optimization.offload_optimizer / offload_param)"
        problem = Problem("zero_optimization.stage", memory.stage, None, fix, "vtt", detail)
    else:
        fix = "name a DeepSpeed file (deepspeed/zero3.json partitions the model states over the GPUs), or use_peft"
        problem = Problem("deepspeed", None, None, fix, "vtt", detail, file)
    if total > have:
        return [problem], []
    if total > (1 - MEMORY_MARGIN) * have:
        problem.detail += f": within {MEMORY_MARGIN:.0%}, no room for activations"
        return [], [problem]
    return [], []
