"""GPU benchmark: vtt's trainers against the seed approach, side by side on the same card.

    python bench/train_throughput.py --arch llava-0.5b --steps 25 --seed-script bench/seed_baseline.py \
        --variant "vtt=--per_device_train_batch_size 8" --variant "gc=--activation_checkpointing true"

Builds the architecture from its config with random weights (vtt.models.tiny), writes synthetic 384 px videos
and a manifest whose questions and answers are as long as the seed baseline's (12 and 40 words), then
runs, in this one invocation:
  - the seed approach (bench/seed_baseline.py);
  - each vtt variant: `vtt run --config jobs/<trainer>.yaml` with the variant's overrides, through
    vtt's own launcher, data path and trainer, reading the trainer's throughput.json.
Prints one RESULT json line per run and a table; MFU uses the seed's FLOP count (6·N·tokens plus
attention, for the language model and the vision tower, over 989 TFLOP/s); `mfu_6n` beside it counts
6·N·tokens over ALL N parameters of the model (language model, vision tower, projector), as NeMo
Automodel's LoRA/QLoRA tables do, whatever trains.

An adapter run on one GPU, and QLoRA held to a 24 GB card's memory:

    python bench/train_throughput.py --arch llava-7b --steps 15 --config jobs/llava-7b-lora.yaml --variant "lora="
    python bench/train_throughput.py --arch llava-7b --steps 15 --config jobs/llava-7b-qlora.yaml \
        --variant "qlora=" --memory-cap-gb 24

`--memory-cap-gb` holds each trainer process to that many GiB of the GPU's memory through
`torch.cuda.set_per_process_memory_fraction` (PyTorch's allocator raises out-of-memory past it; the CUDA
context and libraries' own allocations are outside it): the bench writes a `sitecustomize.py` into its
work folder and puts that folder first on the trainers' PYTHONPATH; it acts only in the processes the
DeepSpeed launcher starts (LOCAL_RANK set), and runs any other sitecustomize after it.
`--patch-qlora-load` (a stand-in for a fix in vtt, off by default) gives those processes what
vtt.models.adapters' QLoRA load needs from TRL 1.16 and does not find, `trl.get_kbit_device_map`
(see bench/RESULTS.md, 2026-12-02).

Qwen2.5-VL-7B on clips of varied length, the peer's work (../shared/bench/peer-llamafactory/qwen25vl-video/):

    python bench/train_throughput.py --arch qwen2_5_vl-7b --steps 20 --config jobs/qwen2_5_vl-7b.yaml \
        --seed-script bench/seed_baseline.py --variant "bf16=--deepspeed '' --per_device_train_batch_size 4"

builds, with bench/qwen25vl_video_prep.py (the peer's prep.py), the random-weight Qwen2.5-VL-7B folder (the real
Qwen2_5_VLProcessor) and its 24 clips of 2-60 s (640x360, 24/30 fps) with its 144 rows, as a vtt manifest.
For these archs the trainer processes count, from each batch as it reaches `Trainer.training_step`, the
padded positions, the real (attended) tokens, visual tokens, causal attention pairs and vision patches
(the bench's sitecustomize), and throughput.json gains a `bench` block over the same steady-state steps:
real and padded tokens/s, samples/s, and MFU as the peer's README defines it
(6·N_LM·T + attention + 6·N_merger·V + 2·N_vision·patches + vision attention, over 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEAK_FLOPS = 989e12  # H100 SXM bf16 dense
SEED_QUESTION_WORDS, SEED_ANSWER_WORDS = 12, 40


def lm_flops_per_token(c, seq: int) -> float:
    n = c.num_hidden_layers * (4 * c.hidden_size**2 + 3 * c.hidden_size * c.intermediate_size)
    n += c.vocab_size * c.hidden_size
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq


def vit_flops_per_patch(c, patches: int) -> float:
    n = c.num_hidden_layers * (4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size)
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * patches


def llava_flops_per_sample(config, seq: int, frames: int, train_vision: bool = True) -> float:
    """Training FLOPs of one sample; a frozen vision tower runs forward only (2 of the 6 N·T)."""
    patches_per_frame = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    vision = vit_flops_per_patch(config.vision_config, patches_per_frame) * (patches_per_frame * frames)
    return lm_flops_per_token(config.text_config, seq) * seq + (vision if train_vision else vision / 3)


def seq2seq_flops_per_token(c) -> float:
    # encoder + decoder layers (decoder has cross-attention: 4 more d^2 projections), output head
    d, f = c.d_model, c.encoder_ffn_dim
    n = c.encoder_layers * (4 * d * d + 2 * d * f) + c.decoder_layers * (8 * d * d + 2 * d * f) + c.vocab_size * d
    return 6 * n


def write_varied_data(out: Path) -> Path:
    """The peer's 24 clips (2-60 s, 640x360, 24/30 fps) and 144 rows (bench/qwen25vl_video_prep.py), as a vtt
    manifest: the same videos, questions and answers in the same order."""
    manifest = out / "manifest.jsonl"
    if manifest.exists():
        return manifest
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import qwen25vl_video_prep as prep

    prep.clips(argparse.Namespace(out=out, clips=24, samples=144, min_s=2.0, max_s=60.0, size="640x360"))
    lines = []
    for i, row in enumerate(json.loads((out / "train.json").read_text())):
        user, assistant = row["messages"]
        question = user["content"].removeprefix("<video>")
        lines.append(
            json.dumps({"id": str(i), "video": row["videos"][0], "question": question, "answer": assistant["content"]})
        )
    partial = out / f".manifest.{os.getpid()}"
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(manifest)
    return manifest


def write_data(work: Path, samples: int, clips: int, size: int, trainer: str) -> Path:
    """Synthetic clips and a manifest with seed-length questions and answers."""
    from vtt.data.synthetic import write_video
    from vtt.demo_words import COLOURS, DIRECTIONS, VOCABULARY

    rng = np.random.default_rng(0)
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(clips):
        name = f"clip{i:03d}.mp4"
        if not (videos / name).exists():
            partial = videos / f".{os.getpid()}.{name}"
            write_video(partial, list(COLOURS)[i % 4], list(DIRECTIONS)[i % 4], frames=24, size=(size, size))
            partial.replace(videos / name)
        names.append(name)
    lines = []
    for i in range(samples):
        question = " ".join(rng.choice(VOCABULARY, SEED_QUESTION_WORDS))
        # Answers of 20-60 words (40 on average, as the seed's): real batches are padded.
        answer = " ".join(rng.choice(VOCABULARY, rng.integers(SEED_ANSWER_WORDS // 2, SEED_ANSWER_WORDS * 3 // 2 + 1)))
        row = {"id": str(i), "video": names[i % clips], "question": question, "answer": answer}
        if trainer == "seq2seq":
            row.update(title=" ".join(rng.choice(VOCABULARY, 4)), tags=["video", "clip"])
        lines.append(json.dumps(row))
    manifest = videos / "manifest.jsonl"
    partial = videos / f".manifest.{os.getpid()}"  # benches on other GPUs may read it meanwhile
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(manifest)
    return manifest


HOOKS = '''"""Written by bench/train_throughput.py: acts in the trainer processes only (LOCAL_RANK set by DeepSpeed's
launcher), then runs the sitecustomize this one shadows, if any."""
import os
import sys


def _bench_hooks():
    if "LOCAL_RANK" not in os.environ:
        return
    device = int(os.environ["LOCAL_RANK"])
    cap = os.environ.get("VTT_BENCH_MEMORY_CAP_GB")
    if cap:
        import torch

        if not torch.cuda.is_available():
            print("vtt bench: no CUDA device: the memory cap does not apply", file=sys.stderr)
            cap = None
    if cap:
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = float(cap) * 2**30 / total
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        print(f"vtt bench: memory cap {cap} GiB of {total / 2**30:.1f} GiB (fraction {fraction:.4f})", file=sys.stderr)
    dtype = os.environ.get("VTT_BENCH_QLORA_PATCH")
    if dtype:
        # vtt.models.adapters imports trl.get_kbit_device_map, which TRL 1.16 no longer has (TRL's old one:
        # this process's GPU for the whole model); and before vtt ea6afd1 it asked TRL's get_quantization_config
        # for a ModelConfig.dtype its task has not. Give it both where missing, as a fix in vtt would.
        import trl
        from vtt.models import adapters

        if not hasattr(trl, "get_kbit_device_map"):
            trl.get_kbit_device_map = lambda: {"": device}
        original = adapters.quantization_config

        def quantization_config(task, *training):
            if not training and not hasattr(task, "dtype"):  # vtt before ea6afd1: no compute dtype
                task.dtype = dtype  # the 4-bit layers' compute dtype: the run's bf16
            return original(task, *training)

        adapters.quantization_config = quantization_config
        print(f"vtt bench: QLoRA load patched (compute dtype {dtype}, device map {{'': {device}}})", file=sys.stderr)


def _bench_stats():
    """Per-batch counts for the Qwen2.5-VL bench (VTT_BENCH_STATS=1): patched in after transformers.trainer and
    vtt.train.throughput are imported, so nothing is imported here before vtt's own start-up runs."""
    if "LOCAL_RANK" not in os.environ or not os.environ.get("VTT_BENCH_STATS"):
        return
    import importlib.abc
    import importlib.machinery

    stats = []  # per micro batch (one optimizer step each): the fields below
    visual = []  # visual tokens of each video
    fields = ["padded", "real", "visual", "videos", "rows", "lm_pairs", "patches", "vis_full_pairs", "vis_win_pairs"]

    def window_pairs(h, w, win=4):  # Qwen2.5-VL windowed attention: merged grid cut into win x win windows
        mh, mw = h // 2, w // 2
        rows = [min(win, mh - i) for i in range(0, mh, win)]
        cols = [min(win, mw - j) for j in range(0, mw, win)]
        return sum((4 * r * c) ** 2 for r in rows for c in cols)

    def count(model, inputs):
        ids = inputs["input_ids"]
        config = getattr(model, "config", None) or model.module.config
        if "attention_mask" in inputs:
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
        else:  # a padding-free row: its samples start where position_ids restart
            starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
            lengths = [end - start for start, end in zip(starts[:-1], starts[1:], strict=True)]
        grid = inputs.get("video_grid_thw")
        grid = grid.tolist() if grid is not None else []
        row = [ids.numel(), int(sum(lengths)), int((ids == config.video_token_id).sum()), len(grid), len(lengths),
               int(sum(n * (n + 1) // 2 for n in lengths)), sum(t * h * w for t, h, w in grid),
               sum(t * (h * w) ** 2 for t, h, w in grid), sum(t * window_pairs(h, w) for t, h, w in grid)]
        stats.append(row)
        visual.extend(t * h * w // 4 for t, h, w in grid)

    def patch_trainer(module):
        original = module.Trainer.training_step

        def training_step(self, model, inputs, *a, **kw):
            count(model, inputs)
            return original(self, model, inputs, *a, **kw)

        module.Trainer.training_step = training_step

    def patch_throughput(module):
        original = module.ThroughputCallback.summary

        def summary(self, world_size):
            out = original(self, world_size)
            k = min(self.skip_steps, max(len(self.ends) - 2, 0))
            n = min(len(self.ends), len(stats))
            if n - k >= 2:
                window = stats[k + 1 : n]  # the steps whose times the steady state sums
                out["bench"] = {
                    "window_steps": len(window),
                    "window_s": round(self.ends[n - 1] - self.ends[k], 3),
                    **{f: sum(r[i] for r in window) for i, f in enumerate(fields)},
                    "all_steps": {f: sum(r[i] for r in stats) for i, f in enumerate(fields)},
                    "visual_tokens_per_video": {"mean": round(sum(visual) / max(len(visual), 1), 1),
                                                "min": min(visual or [0]), "max": max(visual or [0]), "n": len(visual)},
                }
            return out

        module.ThroughputCallback.summary = summary

    patches = {"transformers.trainer": patch_trainer, "vtt.train.throughput": patch_throughput}

    class After(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in patches:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return None
            execute, patch = spec.loader.exec_module, patches.pop(name)

            def exec_module(module):
                execute(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, After())


_bench_hooks()
_bench_stats()
_here = os.path.dirname(os.path.abspath(__file__))
_spec = __import__("importlib.machinery").machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None and _spec.loader is not None:
    _module = __import__("importlib.util").util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
'''


def trainer_env(args, work: Path) -> dict | None:
    """The environment of `vtt run` for --memory-cap-gb / --patch-qlora-load (None: this process's as it is)."""
    if not (args.memory_cap_gb or args.patch_qlora_load or args.stats):
        return None
    hooks = work / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOKS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hooks), env.get("PYTHONPATH")) if p)
    if args.memory_cap_gb:
        env["VTT_BENCH_MEMORY_CAP_GB"] = str(args.memory_cap_gb)
    if args.patch_qlora_load:
        env["VTT_BENCH_QLORA_PATCH"] = "bfloat16"
    if args.stats:
        env["VTT_BENCH_STATS"] = "1"
    return env


def run_logged(command: list[str], log: Path, env: dict | None = None) -> tuple[int, str, float]:
    start = time.time()
    with log.open("w") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return code, log.read_text(), time.time() - start


def run_seed(args, work: Path, model: Path, manifest: Path) -> dict:
    from vtt.cluster.local import per_node_launch

    # vtt's launch, so that a bench given CUDA_VISIBLE_DEVICES=2 runs its seed on GPU 2 as well
    command = [*per_node_launch(args.gpus), args.seed_script, *shlex.split(args.seed_args)]
    if args.trainer == "seq2seq":  # the seq2seq seed script trains on this run's model and data
        command += ["--model", str(model), "--manifest", str(manifest)]
    code, text, wall = run_logged(command, work / "seed.log")
    found = re.findall(r"^RESULT (.*)$", text, re.M)
    if code or not found:
        return {"name": "seed", "error": f"exit {code}", "tail": text[-1500:]}
    result = json.loads(found[-1])
    result.update(name="seed", args=args.seed_args, wall_s=round(wall, 1))
    return result


def run_vtt(args, work: Path, name: str, overrides: str, model: Path, manifest: Path, per_sample) -> dict:
    out = work / f"run-{name}"
    # what `vtt run` and `vtt check` both take
    command = ["--config", args.config or f"jobs/{args.trainer}.yaml", "--gpus", str(args.gpus)]
    command += ["--model_name_or_path", str(model), "--dataset", str(manifest), "--output_dir", str(out)]
    command += ["--max_steps", str(args.steps), "--save_strategy", "no", "--logging_steps", "5", "--report_to", "none"]
    command += ["--disable_tqdm", "true", "--push_to_hub", "false"]
    overrides_list = shlex.split(overrides)
    if "--global_batch_size" not in overrides_list:  # one micro batch per optimizer step: steps are comparable
        if "--per_device_train_batch_size" in overrides_list:
            micro = int(overrides_list[overrides_list.index("--per_device_train_batch_size") + 1])
        else:
            from vtt.config import read_yaml

            micro = read_yaml(ROOT / command[1]).get("per_device_train_batch_size", 1)
        overrides_list += ["--global_batch_size", str(micro * args.gpus)]
    code, text, wall = run_logged(
        [sys.executable, "-m", "vtt.cli", "run", *command, *overrides_list],
        work / f"{name}.log",
        trainer_env(args, work),
    )
    summary_file = out / "throughput.json"
    settings = {"config": command[1], "memory_cap_gb": args.memory_cap_gb, "patched_qlora_load": args.patch_qlora_load}
    if code or not summary_file.exists():
        return {"name": name, "args": overrides, **settings, "error": f"exit {code}", "tail": text[-2500:]}
    result = json.loads(summary_file.read_text())
    tokens = result.get("tokens_per_second_per_gpu", 0.0)
    task = json.loads((out / "vtt-run.json").read_text())["task"]
    result["freeze_vision_tower"] = task.get("freeze_vision_tower", False)
    if args.stats:  # Qwen2.5-VL on varied clips: real and padded tokens, MFU as the peer counts it
        result.update(qwen_figures(result.get("bench"), args.sizes, args.gpus))
        flops_per_token = 0.0
    else:
        flops_per_token = per_sample(result)
    result.update(name=name, args=overrides, wall_s=round(wall, 1), mfu=round(tokens * flops_per_token / PEAK_FLOPS, 4))
    result.update(settings, mfu_6n=round(tokens * 6 * args.params / PEAK_FLOPS, 4), params=args.params)
    trained = re.findall(r"vtt adapters: trainable ([\d,]+) of ([\d,]+) parameters", text)
    if trained:
        result["adapter_trainable"], result["adapter_total"] = (int(n.replace(",", "")) for n in trained[-1])
    result["check_model_states_gb"] = check_estimate([*command, *overrides_list])
    return result


def qwen_sizes(model: Path) -> dict:
    """Parameter counts the peer's MFU uses, from the model folder's config (meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        net = AutoModelForImageTextToText.from_config(config)
    names = dict(net.named_parameters())
    text, vision = config.text_config, config.vision_config
    lm = sum(p.numel() for n, p in names.items() if "language_model" in n and "embed_tokens" not in n)
    lm += text.hidden_size * text.vocab_size  # lm_head (the embedding, when tied)
    merger = sum(p.numel() for n, p in names.items() if "merger" in n)
    tower = sum(p.numel() for n, p in names.items() if "visual" in n and "merger" not in n)
    heads = text.num_attention_heads
    return dict(
        params_all=sum(p.numel() for p in names.values()),
        params_trained_tower_frozen=sum(p.numel() for p in names.values()) - tower,
        lm_matmul=lm,
        merger=merger,
        vision_frozen=tower,
        layers=text.num_hidden_layers,
        d_attn=heads * (getattr(text, "head_dim", None) or text.hidden_size // heads),
        vis_hidden=vision.hidden_size,
        vis_full_layers=len(vision.fullatt_block_indexes),
        vis_win_layers=vision.depth - len(vision.fullatt_block_indexes),
    )


def qwen_figures(stats: dict | None, z: dict, gpus: int) -> dict:
    """Real / padded tokens/s, samples/s and MFU over the steady-state steps, as the peer's lf_train.py counts them
    (the vision tower frozen: forward only; checkpointing's recompute not counted)."""
    if not stats:
        return {"bench_error": "no per-batch counts came back (the bench's sitecustomize did not act)"}
    seconds = stats["window_s"]
    vision = 2 * z["vision_frozen"] * stats["patches"] + 4 * z["vis_hidden"] * (
        z["vis_full_layers"] * stats["vis_full_pairs"] + z["vis_win_layers"] * stats["vis_win_pairs"]
    )
    rest = 12 * z["layers"] * z["d_attn"] * stats["lm_pairs"] + 6 * z["merger"] * stats["patches"] / 4 + vision

    def mfu(tokens: float) -> float:
        return round((6 * z["lm_matmul"] * tokens + rest) / seconds / PEAK_FLOPS / gpus, 4)

    steps = stats["window_steps"]
    return dict(
        real_tokens_per_s_per_gpu=round(stats["real"] / seconds / gpus, 1),
        padded_tokens_per_s_per_gpu=round(stats["padded"] / seconds / gpus, 1),
        samples_per_s=round(stats["videos"] / seconds, 3),
        pad_share=round(1 - stats["real"] / stats["padded"], 4),
        mfu_real=mfu(stats["real"]),
        mfu_padded=mfu(stats["padded"]),
        per_step={key: round(stats[key] / steps, 1) for key in ("padded", "real", "visual", "videos", "rows")},
        sizes=z,
    )


def check_estimate(run_arguments: list[str]) -> float | None:
    """`vtt check`'s model-state memory per GPU for the run just made, beside its measured figure."""
    check = [sys.executable, "-m", "vtt.cli", "check", "--json", *run_arguments]
    done = subprocess.run(check, capture_output=True, text=True, cwd=ROOT)
    try:
        return round(json.loads(done.stdout)["memory"]["total_gb"], 2)
    except (ValueError, KeyError, TypeError):
        print(f"vtt check gave no estimate: {done.stdout[-500:]} {done.stderr[-500:]}", flush=True)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch",
        default="llava-0.5b",
        choices=["llava-tiny", "llava-0.5b", "llava-7b", "nllb-tiny", "nllb-600m", "qwen2_5_vl-tiny", "qwen2_5_vl-7b"],
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vtt-bench"))
    parser.add_argument("--seed-script", help="path to seed_baseline.py (or seed_seq2seq.py); omitted: no baseline")
    parser.add_argument("--seed-args", default="--size 0.5b --batch 8 --workers 12 --gc --steps 25")
    parser.add_argument("--config", help="the run config the vtt variants start from (default: jobs/<trainer>.yaml)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=overrides for `vtt run`")
    parser.add_argument(
        "--data",
        choices=["videos", "prepared"],
        default="videos",
        help="vtt's runs decode the clips on the fly, or read a dataset `vtt prepare` wrote first",
    )
    parser.add_argument("--out", type=Path, help="append RESULT lines to this file")
    parser.add_argument(
        "--memory-cap-gb",
        type=float,
        help="hold each vtt trainer process to this many GiB of GPU memory (24: a 24 GB card)",
    )
    parser.add_argument(
        "--patch-qlora-load", action="store_true", help="give vtt's QLoRA load what TRL 1.16 lacks (see the docstring)"
    )
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the bench's own model-building process
    args = parser.parse_args()
    args.trainer = "seq2seq" if args.arch.startswith("nllb") else "llava"
    args.stats = args.arch.startswith("qwen2_5_vl")  # the varied clips, counted per batch
    if args.build:
        return build(args.build, args.arch, args.trainer)

    from transformers import AutoConfig

    work = args.work / args.arch
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    t0 = time.time()
    if not (model / "config.json").exists():
        # In a process of its own: built in this one, the 7B left 33 GB held on the GPU (nvidia-smi) beside the
        # runs that followed, after empty_cache (2026-12-02). The runs start their own processes on this GPU.
        subprocess.run(
            [sys.executable, Path(__file__).resolve(), "--build", model, "--arch", args.arch], check=True, cwd=ROOT
        )
    config = AutoConfig.from_pretrained(model)
    args.params = all_parameters(config, args.trainer)
    if args.stats:
        args.sizes = qwen_sizes(model)
        manifest = write_varied_data(work / "varied")
    else:
        samples = args.steps * args.gpus * 16  # enough for micro batches up to 16
        manifest = write_data(work, samples, clips=32, size=384, trainer=args.trainer)
    dataset = manifest if args.data == "videos" else prepare(work, manifest, model, args)
    print(f"model and data ready in {time.time() - t0:.0f}s: {model}, {dataset}", flush=True)

    def flops_per_token(result: dict) -> float:
        # tokens/s counts every position of the padded batch; seq is what one sample occupies
        if args.trainer == "seq2seq":
            return seq2seq_flops_per_token(config)
        seq = result.get("sequence_length") or args.seq
        return llava_flops_per_sample(config, seq, args.frames, not result["freeze_vision_tower"]) / seq

    args.seq = sequence_length(model, manifest, args.frames) if args.trainer == "llava" and not args.stats else 0
    results = []

    def record(result: dict) -> None:
        # Written as each run ends: a bench cut off by a time limit keeps the runs that finished.
        results.append(result)
        print("RESULT " + json.dumps(result), flush=True)
        if args.out:
            with args.out.open("a") as sink:
                sink.write(json.dumps({"arch": args.arch, "gpu": gpu_name(), "gpus": args.gpus, **result}) + "\n")

    if args.seed_script:
        record(run_seed(args, work, model, manifest))
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        record({**run_vtt(args, work, name, overrides, model, dataset, flops_per_token), "data": args.data})
    print(f"\n{args.arch} on {gpu_name()} ({args.gpus} GPU):")
    print(
        f"{'run':14s} {'tokens/s/GPU':>12s} {'MFU':>7s} {'MFU 6N':>7s} {'peak GB':>8s} {'data wait':>9s}"
        # the model states' peak (optimizer step) and vtt check's estimate
        f" {'1st step s':>10s} {'states GB':>9s} {'check GB':>8s}"
    )
    for r in results:
        tokens = r.get("tokens_per_s_per_gpu", r.get("tokens_per_second_per_gpu", 0))
        if "real_tokens_per_s_per_gpu" in r:
            print(
                f"{r['name']}: real {r['real_tokens_per_s_per_gpu']:,.0f} tokens/s, padded "
                f"{r['padded_tokens_per_s_per_gpu']:,.0f}, {r['samples_per_s']} samples/s, MFU real "
                f"{r['mfu_real']:.1%} / padded {r['mfu_padded']:.1%}"
            )
        wait = r.get("data_wait_share")
        peak = r.get("peak_mem_gb") or r.get("peak_memory_gb") or 0
        print(
            f"{r['name']:14s} {tokens:12,.0f} {r.get('mfu', 0):7.1%} {r.get('mfu_6n', 0):7.1%} {peak:8.1f}"
            f" {'' if wait is None else f'{wait:.1%}':>9s} {r.get('first_step_s', r.get('setup_s', '')):>10}"
            f" {r.get('model_states_peak_gb', ''):>9} {r.get('check_model_states_gb') or '':>8}"
            + (f"  ERROR {r['error']}" if "error" in r else "")
        )


def prepare(work: Path, manifest: Path, model: Path, args) -> Path:
    """The manifest's clips decoded once by `vtt prepare` (frames at the processor's size) into a dataset."""
    out = work / f"prepared-{args.trainer}-{args.frames}f-{sum(1 for _ in manifest.open())}"
    if not out.exists():
        command = [sys.executable, "-m", "vtt.cli", "prepare", "--manifest", str(manifest), "--out", str(out)]
        command += ["--trainer", args.trainer, "--frames", str(args.frames), "--model", str(model)]
        code, text, _ = run_logged(command, work / "prepare.log")
        if code:
            raise SystemExit(f"vtt prepare failed (exit {code}):\n{text[-2000:]}")
    return out


def sequence_length(model: Path, manifest: Path, frames: int) -> int:
    """Tokens of one sample as the llava trainer's collator builds it (prompt + image tokens + answer)."""
    from transformers import AutoConfig, AutoProcessor

    from vtt.data.datasets import llava_example, read_manifest
    from vtt.data.video import sample_frames
    from vtt.models.llava import fix_processor

    processor = AutoProcessor.from_pretrained(model)
    fix_processor(processor, AutoConfig.from_pretrained(model))
    sample = read_manifest(manifest)[0]
    example = llava_example(sample, sample_frames(sample.video, frames))
    text = processor.apply_chat_template(example["prompt"] + example["completion"])
    return int(processor(text=[text], images=[example["images"]], return_tensors="pt")["input_ids"].shape[1])


def build(model: Path, arch: str, trainer: str) -> None:
    """The architecture with random weights, saved to `model`."""
    import torch

    from vtt.models.tiny import build_llava, build_nllb

    if arch.startswith("qwen2_5_vl"):  # the peer's random-weight folder (on the GPU when there is one)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import qwen25vl_video_prep as prep

        return prep.model(argparse.Namespace(size=arch.split("-")[1], out=model))
    size = arch.split("-")[1]
    # Random init on the GPU when there is one: the 7B's 8B weights take minutes on CPU cores, seconds there.
    with torch.device("cuda") if torch.cuda.is_available() else contextlib.nullcontext():
        if trainer == "llava":
            build_llava(model, size, "tiny" if size == "tiny" else "so400m", dtype=torch.bfloat16)
        else:
            build_nllb(model, size, dtype=torch.bfloat16)


def all_parameters(config, trainer: str) -> int:
    """Every parameter of the model the trainer builds from `config` (meta device: no weights), adapter aside."""
    from vtt.models.size import count_parameters

    return count_parameters(config, trainer)[0]


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
