"""Start-up cost of train.py, against `python -c "import torch"`.

    python bench/startup.py                     # tiny generated data and the small model
    python bench/startup.py --data-dir ~/data --model vgg11 --width 0.25

Two figures, each the median of alternating runs next to the median of `import torch`:

- a finished configuration, where train.py trains nothing: a search reruns these, and each must
  cost little more than importing torch;
- launch to the first training step of a configuration with one epoch left, as a promoted trial
  of a search starts: from just before the process is spawned to the start of the epoch's training
  loop, read from the epoch's end time and duration in its checkpoint's history. Every run starts
  from a fresh copy of the same one-epoch scratch folder.

The commands run alternately, so a machine that gets busier or quieter during the benchmark
affects both alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from tiny_cifar import write_cifar10  # noqa: E402  (needs the path set above)

CONFIG = ["--lr", "0.05", "--batch-size", "32", "--device", "cpu", "--quiet"]


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def seconds_to_first_step(command: list[str], scratch: Path) -> float:
    """Run `command` and return the seconds from spawning it to the start of its first epoch."""
    import torch

    launched = time.time()
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    first = state["history"][-1]  # the only epoch this run trained
    return first["timestamp"] - first["epoch_seconds"] - launched


def main() -> int:
    parser = argparse.ArgumentParser(prog="startup.py", description="Time train.py's start-up.")
    parser.add_argument("--runs", type=int, default=10, metavar="N", help="runs of each command (default: 10)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder with cifar-10-batches-py (default: tiny generated data)")
    parser.add_argument("--model", default="small", metavar="NAME", help="model to start (default: small)")
    parser.add_argument("--width", default="0.5", metavar="FACTOR", help="its width (default: 0.5)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data_dir = args.data_dir or write_cifar10(folder / "data")
        train = [sys.executable, str(ROOT / "train.py"), *CONFIG, "--model", args.model, "--width", args.width,
                 "--data-dir", str(data_dir)]
        import_torch = [sys.executable, "-c", "import torch"]

        # A finished configuration
        finished = train + ["--epochs", "1", "--scratch", str(folder / "finished")]
        subprocess.run(finished, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        torch_times, finished_times = [], []
        for _ in range(args.runs):
            torch_times.append(seconds(import_torch))
            finished_times.append(seconds(finished))

        # One epoch left: each run gets a copy of the scratch folder as the first run left it
        first_step_times = []
        for run in range(args.runs):
            scratch = folder / f"resume{run}"
            shutil.copytree(folder / "finished", scratch)
            first_step_times.append(seconds_to_first_step(train + ["--epochs", "2", "--scratch", str(scratch)],
                                                          scratch))
            torch_times.append(seconds(import_torch))

    torch_median = statistics.median(torch_times)
    finished_median, first_step_median = statistics.median(finished_times), statistics.median(first_step_times)
    print(f"model {args.model} at width {args.width}, data {args.data_dir or 'tiny generated'}")
    print(f"python -c 'import torch'               median {torch_median:.3f} s over {len(torch_times)} runs")
    print(f"train.py, finished configuration       median {finished_median:.3f} s over {args.runs} runs")
    print(f"  ratio                                {finished_median / torch_median:.2f} (goal: at most 1.15)")
    print(f"train.py, launch to first step         median {first_step_median:.3f} s over {args.runs} runs")
    print(f"  ratio                                {first_step_median / torch_median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
