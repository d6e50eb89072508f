"""A run's report as one self-contained HTML page (`vtt report RUN_DIR`, `make report RUN=...`).

    vtt report outputs/demo/runs/tiny-llava          # -> outputs/demo/runs/tiny-llava/report.html
    vtt report SWEEP_DIR                             # a `vtt sweep` folder: one page comparing its runs

Reads what a run left in its output_dir: trainer_state.json (losses, learning rate, eval metrics and
tokens/s per logged step), throughput.json (steady-state tokens/s, data wait, GPU memory),
vtt-run.json and deepspeed.json (the configs actually used, saved by the trainers),
eval_generation.json and eval_predictions.jsonl (from `vtt eval` or the end of training).
The plots are PNGs drawn by matplotlib and embedded as base64, so the page needs no network and no
other file: it can be mailed or attached to a ticket.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path
from typing import Any

from vtt.after.metrics import is_exact_match, read_predictions
from vtt.files import DEEPSPEED_RECORD, RUN_RECORD, write_atomically

TEMPLATES = Path(__file__).parent
REPORT = "report.html"
TRAIN_COLOUR = "#1f77b4"  # matplotlib's first colour: the train loss line (the screenshot test looks for it)
EVAL_COLOUR = "#ff7f0e"
SAMPLES_SHOWN = 12
# Training arguments worth a line in the summary; the whole resolved set is in a fold below it.
KEY_TRAINING_ARGUMENTS = (
    "output_dir",
    "deepspeed",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_steps",
    "num_train_epochs",
    "bf16",
    "fp16",
    "gradient_checkpointing",
    "eval_strategy",
    "eval_steps",
    "logging_steps",
    "report_to",
    "seed",
)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); was the run stopped while writing it?") from None


def series(history: list[dict[str, Any]], key: str, exclude: str | None = None) -> tuple[list[int], list[float]]:
    """(steps, values) of every log entry holding `key` (and not `exclude`)."""
    points = [
        (entry["step"], float(entry[key]))
        for entry in history
        if key in entry and "step" in entry and not (exclude and exclude in entry)
    ]
    return [s for s, _ in points], [v for _, v in points]


def png(lines: list[tuple[str, list[int], list[float], str]], ylabel: str, from_zero: bool = False) -> str:
    """A base64 PNG of one or more (label, steps, values, colour) lines over the training step."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is drawn on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=110)
    for label, steps, values, colour in lines:
        marker = "o" if len(steps) < 30 else None
        ax.plot(steps, values, label=label, color=colour, linewidth=2, marker=marker, markersize=3.5)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if from_zero:  # a constant learning rate otherwise fills the plot with digits of a flat line
        ax.set_ylim(bottom=0, top=max(max(values) for _, _, values, _ in lines) * 1.1 or 1)
    ax.grid(True, color="#e3e3e3", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    if len(lines) > 1:
        ax.legend(frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every plot the run's logs allow: loss, learning rate, eval metrics, tokens/s, GPU memory."""
    out = []
    train = series(history, "loss")
    evaluation = series(history, "eval_loss")
    if train[0] or evaluation[0]:
        lines = [("train loss", *train, TRAIN_COLOUR)] if train[0] else []
        lines += [("eval loss", *evaluation, EVAL_COLOUR)] if evaluation[0] else []
        out.append({"title": "Loss", "id": "loss", "png": png(lines, "loss")})
    lr = series(history, "learning_rate")
    if lr[0]:
        chart = png([("lr", *lr, TRAIN_COLOUR)], "lr", from_zero=True)
        out.append({"title": "Learning rate", "id": "learning-rate", "png": chart})
    metric_lines = [
        (name, *series(history, f"eval_{name}"), colour)
        for name, colour in (("bleu", "#2ca02c"), ("chrf", "#9467bd"), ("exact_match", "#8c564b"))
    ]
    metric_lines = [line for line in metric_lines if line[1]]
    if metric_lines:
        out.append({"title": "Eval generation metrics", "id": "eval-metrics", "png": png(metric_lines, "score")})
    # Steady-state tokens/s per GPU when the throughput callback's figures reach the history; else the
    # Trainer's own running average over all processes (logged with include_num_input_tokens_seen).
    tokens, label = series(history, "tokens_per_second_per_gpu"), "tokens/s per GPU"
    if not tokens[0]:
        tokens, label = series(history, "train_tokens_per_second", exclude="train_loss"), "tokens/s (running mean)"
    if tokens[0]:
        out.append({"title": "Tokens / s", "id": "tokens", "png": png([(label, *tokens, "#17becf")], label)})
    for key in ("peak_memory_gb", "gpu_memory_gb", "gpu_memory_gib"):
        memory = series(history, key)
        if memory[0]:
            chart = png([(key, *memory, "#7f7f7f")], key, from_zero=True)
            out.append({"title": "Peak GPU memory", "id": "memory", "png": chart})
            break
    return out


THROUGHPUT_LABELS = {  # throughput.json (vtt.train.throughput) -> summary card
    "tokens_per_second_per_gpu": "tokens / s per GPU (steady)",
    "step_s": "step time (median)",
    "data_wait_share": "share of step waiting for data",
    "first_step_s": "launch to first step",
    "peak_memory_gb": "peak GPU memory",
}
UNITS = {"step_s": " s", "first_step_s": " s", "peak_memory_gb": " GB"}


def summary(state: dict[str, Any], record: dict[str, Any], throughput: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers: steps, final loss, runtime, throughput."""
    history = state.get("log_history", [])
    final = next((entry for entry in reversed(history) if "train_runtime" in entry and "train_loss" in entry), {})
    losses = series(history, "loss")[1]
    eval_losses = series(history, "eval_loss")[1]
    rows = [
        ("trainer", record.get("trainer", "?")),
        ("model", record.get("run", {}).get("model_name_or_path", "?")),
    ]
    if record.get("task", {}).get("use_peft"):  # the folder holds an adapter on that model, not a model
        rows.append(("adapter", adapter_summary(record["task"])))
    rows += [
        ("processes", str(record.get("world_size", "?"))),
        ("steps", f"{state.get('global_step', '?')} of {state.get('max_steps', '?')}"),
        ("epochs", f"{state.get('epoch', 0):.2f}"),
    ]
    if losses:
        rows.append(("train loss", f"{losses[0]:.4f} → {losses[-1]:.4f}"))
    if eval_losses:
        rows.append(("eval loss", f"{eval_losses[0]:.4f} → {eval_losses[-1]:.4f}"))
    if final:
        rows.append(("train runtime", f"{final['train_runtime']:.1f} s"))
        rows.append(("samples / s", f"{final.get('train_samples_per_second', 0):.2f}"))
        tokens = final.get("num_input_tokens_seen") or state.get("num_input_tokens_seen")
        if tokens and final["train_runtime"]:
            rows.append(("tokens / s (whole run)", f"{tokens / final['train_runtime']:,.0f}"))
    for key, label in THROUGHPUT_LABELS.items():
        if key in throughput:
            value = throughput[key]
            text = f"{value:.1%}" if key == "data_wait_share" else f"{value:,}{UNITS.get(key, '')}"
            rows.append((label, text))
    return rows


def adapter_summary(task: dict[str, Any]) -> str:
    """`LoRA r=16, alpha=32, only the adapter saved` (DoRA, rsLoRA, QLoRA said when used) for a use_peft run."""
    kind = "DoRA" if task.get("use_dora") else "rsLoRA" if task.get("use_rslora") else "LoRA"
    bits = " (QLoRA, 4-bit base)" if task.get("load_in_4bit") else " (8-bit base)" if task.get("load_in_8bit") else ""
    return f"{kind} r={task.get('lora_r')}, alpha={task.get('lora_alpha')}{bits}, only the adapter saved"


def card_facts(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(run config, data, log history) of a run folder, for a model card written after training (`vtt push` of
    an adapter run or of its merge): from vtt-run.json and trainer_state.json, empty where one is missing."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / RUN_RECORD) if (run_dir / RUN_RECORD).is_file() else {}
    state = run_dir / "trainer_state.json"
    history = read_json(state).get("log_history", []) if state.is_file() else []
    run, training = record.get("run", {}), record.get("training", {})
    config = {key: value for key, value in {**run, **record.get("task", {})}.items() if value is not None}
    config.update((key, training[key]) for key in KEY_TRAINING_ARGUMENTS if key in training)
    data = {key: run[key] for key in ("dataset", "eval_dataset") if run.get(key)}
    return config, data, history


def sample_predictions(path: Path, limit: int) -> list[dict[str, Any]]:
    """The first `limit` rows of the run's eval predictions, each with `match` (exact match); none without the file."""
    rows = read_predictions(path)[:limit] if path.is_file() else []
    for row in rows:
        row["match"] = is_exact_match(row.get("prediction"), row.get("reference"))
    return rows


def render(run_dir: str | Path) -> str:
    """The report's HTML for a run folder; a ValueError when the folder holds no trainer_state.json."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    run_dir = Path(run_dir)
    state_path = run_dir / "trainer_state.json"
    if not state_path.is_file():
        raise ValueError(
            f"{state_path}: no such file; pass a run's output_dir (the trainers write trainer_state.json "
            "there when training ends)"
        )
    state = read_json(state_path)
    record = read_json(run_dir / RUN_RECORD) if (run_dir / RUN_RECORD).is_file() else {}
    deepspeed = read_json(run_dir / DEEPSPEED_RECORD) if (run_dir / DEEPSPEED_RECORD).is_file() else None
    evaluation = read_json(run_dir / "eval_generation.json") if (run_dir / "eval_generation.json").is_file() else None
    throughput = read_json(run_dir / "throughput.json") if (run_dir / "throughput.json").is_file() else {}
    training = record.get("training", {})
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    return environment.get_template("report.html.j2").render(
        run_dir=str(run_dir),
        summary=summary(state, record, throughput),
        plots=plots(state.get("log_history", [])),
        evaluation=evaluation,
        eval_entries=[entry for entry in state.get("log_history", []) if "eval_loss" in entry],
        run_config={**record.get("run", {}), **record.get("task", {})},
        key_training=[(key, training[key]) for key in KEY_TRAINING_ARGUMENTS if key in training],
        training_json=json.dumps(training, indent=2, default=str) if training else None,
        deepspeed_json=json.dumps(deepspeed, indent=2) if deepspeed else None,
        predictions=sample_predictions(run_dir / "eval_predictions.jsonl", SAMPLES_SHOWN),
    )


# A sweep's folder (`vtt sweep`): one run per subfolder, named after its grid values (name=value,...).
SWEEP_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
SWEEP_METRICS = ("bleu", "chrf", "exact_match")
SWEEP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep {{ folder }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}tr.best{background:#eaf5ea}</style></head>
<body><h1>Sweep {{ folder }}</h1>
<p>{{ runs | length }} run(s), best final train loss first
{%- if unfinished %}; {{ unfinished }} not finished{% endif %}.</p>
<table id="runs"><tr><th>rank</th>{% for name in names %}<th>{{ name }}</th>{% endfor %}<th>steps</th>
<th>final loss</th><th>best loss</th>{% for metric in metrics %}<th>eval {{ metric }}</th>{% endfor %}
<th>tokens/s per GPU</th><th>run</th></tr>
{% for run in runs %}<tr{% if loop.first and run.final is not none %} class="best"{% endif %}>
<td>{{ loop.index }}</td>{% for name in names %}<td>{{ run["values"].get(name, "") }}</td>{% endfor %}
<td>{{ run.status }}</td><td>{{ "%.4f" | format(run.final) if run.final is not none else "" }}</td>
<td>{{ "%.4f" | format(run.best) if run.best is not none else "" }}</td>
{% for metric in metrics %}<td>{{ "%.2f" | format(run.eval[metric]) if metric in run.eval else "" }}</td>{% endfor %}
<td>{{ run.tokens if run.tokens is not none else "" }}</td>
<td>{% if run.report %}<a href="{{ run.name }}/report.html">{{ run.name }}</a>
{%- else %}{{ run.name }}{% endif %}</td></tr>
{% endfor %}</table>
{% if plot %}<h2>Train loss</h2>
<img id="loss" alt="train loss of every run" src="data:image/png;base64,{{ plot }}">{% endif %}
</body></html>
"""


def sweep_runs(folder: Path) -> list[Path]:
    """The run folders of a sweep's output_dir: its subfolders named name=value,... (`vtt sweep` writes them)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and "=" in p.name) if folder.is_dir() else []


def is_sweep(folder: str | Path) -> bool:
    folder = Path(folder)
    return not (folder / "trainer_state.json").is_file() and bool(sweep_runs(folder))


def sweep_row(run: Path) -> dict[str, Any]:
    """One run of a sweep as the comparison shows it: its grid values, steps, losses, eval metrics, tokens/s."""
    values = dict(part.split("=", 1) for part in run.name.split(",") if "=" in part)
    row = {"name": run.name, "values": values, "report": (run / REPORT).is_file(), "final": None, "best": None}
    row.update(eval={}, tokens=None, curve=([], []))
    state_path = run / "trainer_state.json"
    if not state_path.is_file():
        return {**row, "status": "not finished"}
    state = read_json(state_path)
    curve = series(state.get("log_history", []), "loss")
    evaluation = run / "eval_generation.json"
    throughput = read_json(run / "throughput.json") if (run / "throughput.json").is_file() else {}
    return {
        **row,
        "status": f"{state.get('global_step', '?')} of {state.get('max_steps', '?')}",
        "final": curve[1][-1] if curve[1] else None,
        "best": min(curve[1]) if curve[1] else None,
        "curve": curve,
        "eval": read_json(evaluation).get("metrics", {}) if evaluation.is_file() else {},
        "tokens": throughput.get("tokens_per_second_per_gpu"),
    }


def render_sweep(folder: str | Path) -> str:
    """One page comparing a sweep's runs: a table ranked by final train loss, and every run's loss curve."""
    from jinja2 import Environment

    runs = [sweep_row(run) for run in sweep_runs(Path(folder))]
    runs.sort(key=lambda run: (run["final"] is None, run["final"] or 0.0))
    names = list(dict.fromkeys(name for run in runs for name in run["values"]))
    colours = [SWEEP_COLOURS[i % len(SWEEP_COLOURS)] for i in range(len(runs))]
    lines = [(run["name"], *run["curve"], colour) for run, colour in zip(runs, colours, strict=True) if run["curve"][0]]
    return (
        Environment(autoescape=True)
        .from_string(SWEEP_PAGE)
        .render(
            folder=str(folder),
            runs=runs,
            names=names,
            metrics=[metric for metric in SWEEP_METRICS if any(metric in run["eval"] for run in runs)],
            unfinished=sum(run["final"] is None for run in runs),
            plot=png(lines, "train loss") if lines else None,
        )
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    text = render_sweep(run_dir) if is_sweep(run_dir) else render(run_dir)
    return write_atomically(Path(out) if out else Path(run_dir) / REPORT, text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", type=Path, help="a run's output_dir (outputs/demo/runs/tiny-llava), or a sweep's (vtt sweep)"
    )
    parser.add_argument("--out", type=Path, help=f"where to write the page (default: RUN_DIR/{REPORT})")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ValueError(f"unknown arguments: {' '.join(extra)}")
    out = write_report(args.run_dir, args.out)
    print(f"vtt report: {out}")
    return 0
