"""The `vtt` command: one subcommand per step, each living in the module that owns it.

vtt demo | vtt run --config jobs/tiny-llava.yaml --gpus 1 | vtt <command> --help
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs, so `vtt --help`
# stays fast; each has add_arguments(parser) and run(args, extra) -> exit code.
COMMANDS = {
    "demo": ("vtt.demo", "build tiny models and videos, train both trainers here, print the losses"),
    "tiny": ("vtt.models.tiny_video", "build a tiny random model of a family with its real processor, for tests"),
    "run": ("vtt.cluster.local", "run a job on this machine with the deepspeed launcher"),
    "check": ("vtt.check.deepspeed", "check a DeepSpeed file against the training arguments and the GPU count"),
    "render": ("vtt.cluster.jobs", "check a run config on a cluster profile and write its job script"),
    "submit": ("vtt.cluster.jobs", "render a job script and submit it with sbatch; prints the job id and log"),
    "sweep": ("vtt.cluster.sweep", "submit one Slurm job array over a grid of training arguments, a folder per task"),
    "chain": ("vtt.cluster.chain", "submit train -> eval -> report as dependent Slurm jobs; prints their job ids"),
    "stage": ("vtt.cluster.stage", "download what a run config names into the HF cache, for offline compute nodes"),
    "push": ("vtt.after.hub", "upload a run's final model or a prepared dataset to the Hub (retries a failed push)"),
    "merge": ("vtt.after.merge", "merge a run's adapter (use_peft) into its base: a full model, loadable without peft"),
    "predict": ("vtt.after.predict", "answer questions about videos with a trained model, written as JSONL"),
    "eval": ("vtt.after.evaluate", "score a model's answers on held-out data: BLEU, chrF, exact match, length"),
    "report": ("vtt.after.report", "write a run's report.html: loss and learning-rate curves, configs, predictions"),
    "prepare": (
        "vtt.data.prepare",
        "videos + manifest -> a dataset on disk in a trainer's format (frames decoded once)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="vtt", description="Fine-tune video-language models on GPU clusters.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(command_module=module)
        if argv[:1] == [name]:
            importlib.import_module(module).add_arguments(sub)
    args, extra = parser.parse_known_args(argv)
    try:
        return importlib.import_module(args.command_module).run(args, extra) or 0
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"vtt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
