"""What the runtime raises for a DeepSpeed file, training arguments and a world size: the reference
`vtt check` is compared with (tests/test_dsconfig.py runs it in a subprocess of its own).

    python tests/ds_runtime.py verdicts.json < cases.json

Each case is {"ds": {...}, "args": {TrainingArguments keyword: value}, "world": N}; each verdict is
{"stage": null | "training_arguments" | "transformers" | "accelerate" | "deepspeed", "keys": [...], "message"}.

Unlike `vtt check`, nothing here is told the world size: for each world size a torch.distributed
world of that many ranks is started with the "fake" backend (collectives that do nothing), so that
TrainingArguments, accelerate and DeepSpeed read it from torch.distributed as they do under a
launcher. Then the runtime's own steps run in the order a Trainer runs them:
TrainingArguments(deepspeed=...) -> trainer_config_finalize (Trainer.train -> deepspeed_init) ->
accelerate's fill of the remaining "auto" values (Accelerator._prepare_deepspeed, the kwargs it
builds copied below) -> DeepSpeedConfig (deepspeed.initialize). The first exception is the verdict.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import tempfile
from types import SimpleNamespace

import vtt  # noqa: F401  first: its torchvision guard must be in place before transformers imports (vtt._compat)


def start_world(world: int) -> None:
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, PartialState
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        dist.destroy_process_group()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="1")  # never dialled: the fake backend has no network
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    import deepspeed.comm

    deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)  # adopts the group above
    assert deepspeed.comm.get_world_size() == world


def verdict(ds: dict, kwargs: dict, world: int, out: str) -> dict:
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments

    try:
        args = TrainingArguments(output_dir=out, deepspeed=copy.deepcopy(ds), use_cpu=True, report_to="none", **kwargs)
    except ValueError as err:
        return {"stage": "training_arguments", "keys": ["zero_optimization"], "message": str(err)}
    assert args.world_size == world, (args.world_size, world)
    hf = args.hf_deepspeed_config
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
    try:
        hf.trainer_config_finalize(args, model, args.max_steps)
    except ValueError as err:
        keys = re.findall(r"^- ds (\S+)=", str(err), flags=re.M)
        return {"stage": "transformers", "keys": keys, "message": str(err)}

    plugin = args.deepspeed_plugin
    # Accelerator._prepare_deepspeed, for a Trainer with a dataloader of per_device_train_batch_size.
    micro = args.per_device_train_batch_size if plugin.is_auto("train_micro_batch_size_per_gpu") else None
    micro = micro or plugin.get_value("train_micro_batch_size_per_gpu")
    plugin.fill_match(
        "gradient_accumulation_steps", must_match=False, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    fills = {"gradient_clipping": 1.0, "zero_optimization.stage3_gather_16bit_weights_on_model_save": False}
    if micro is not None:
        fills["train_micro_batch_size_per_gpu"] = micro
        fills["train_batch_size"] = micro * plugin.get_value("gradient_accumulation_steps") * world
    try:
        plugin.deepspeed_config_process(must_match=False, **fills)
    except ValueError as err:
        return {"stage": "accelerate", "keys": re.findall(r"`([^`]+)` not found", str(err)), "message": str(err)}

    try:
        DeepSpeedConfig(plugin.deepspeed_config)
    except Exception as err:
        text = str(err)
        if "batch" in text:
            keys = ["train_batch_size"]
        elif "bfloat16 and fp16" in text:
            keys = ["bf16.enabled"]
        elif hasattr(err, "errors"):
            keys = ["zero_optimization." + ".".join(map(str, e["loc"])) for e in err.errors()]
        else:
            keys = ["?"]
        return {"stage": "deepspeed", "keys": keys, "message": text}
    return {"stage": None, "keys": [], "message": ""}


def main() -> None:
    import logging

    for name in ("DeepSpeed", "deepspeed", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cases = json.load(sys.stdin)
    verdicts: list[dict | None] = [None] * len(cases)
    with tempfile.TemporaryDirectory() as out:
        for world in sorted({case["world"] for case in cases}):
            start_world(world)
            for i, case in enumerate(cases):
                if case["world"] == world:
                    verdicts[i] = verdict(case["ds"], case["args"], world, out)
    with open(sys.argv[1], "w") as sink:  # not stdout: DeepSpeed prints there
        json.dump(verdicts, sink)


if __name__ == "__main__":
    main()
