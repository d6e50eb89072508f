"""How long `vtt check` takes from the shell (a fresh Python each time, as make check runs it).

    PYTHONPATH=src python bench/check_time.py [--repeat 5]

Prints the median wall time of each case and of importing what the check needs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "vtt check --config jobs/seq2seq.yaml --gpus 4": ["--config", "jobs/seq2seq.yaml", "--gpus", "4"],
    "vtt check --config jobs/llava.yaml --gpus 8": ["--config", "jobs/llava.yaml", "--gpus", "8"],
    "vtt check --deepspeed deepspeed/zero3.json --gpus 2": ["--deepspeed", "deepspeed/zero3.json", "--gpus", "2"],
}
IMPORTS = "import torch, transformers.training_args, deepspeed.runtime.config, trl"


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = {"python -c 'import torch, transformers, deepspeed, trl'": [sys.executable, "-c", IMPORTS]}
    runs.update({name: [sys.executable, "-m", "vtt.cli", "check", *argv] for name, argv in CASES.items()})
    for name, command in runs.items():
        wall(command)  # warm the page cache
        times = [wall(command) for _ in range(args.repeat)]
        print(f"{statistics.median(times):6.2f} s  (min {min(times):.2f})  {name}")


if __name__ == "__main__":
    main()
