"""Start-up cost of train.py on a finished configuration, against `python -c "import torch"`.

    python bench/startup.py            # 10 alternating runs of each; prints medians and their ratio

A search launches train.py once per configuration and round, and a rerun of a finished one must
cost little more than importing torch. The two commands run alternately, so a machine that gets
busier or quieter during the benchmark affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from tiny_cifar import write_cifar10  # noqa: E402  (needs the path set above)

CONFIG = ["--model", "small", "--width", "0.5", "--lr", "0.05", "--batch-size", "32", "--epochs", "1",
          "--device", "cpu", "--quiet"]


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(prog="startup.py", description="Time train.py on a finished configuration.")
    parser.add_argument("--runs", type=int, default=10, metavar="N", help="runs of each command (default: 10)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        data_dir = write_cifar10(Path(folder) / "data")
        train = [sys.executable, str(ROOT / "train.py"), *CONFIG, "--data-dir", str(data_dir),
                 "--scratch", str(Path(folder) / "scratch")]
        subprocess.run(train, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # finish it
        import_torch = [sys.executable, "-c", "import torch"]
        torch_times, train_times = [], []
        for _ in range(args.runs):
            torch_times.append(seconds(import_torch))
            train_times.append(seconds(train))

    torch_median, train_median = statistics.median(torch_times), statistics.median(train_times)
    print(f"python -c 'import torch'          median {torch_median:.3f} s over {args.runs} runs")
    print(f"train.py, finished configuration  median {train_median:.3f} s over {args.runs} runs")
    print(f"ratio                             {train_median / torch_median:.2f} (goal: at most 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
