"""Wall time of rerunning a finished search, which must launch no train.py for its trials.

    python bench/restart.py            # a tiny search, finished once, then rerun 3 times

It prints each rerun's seconds, their median, and how many trial logs the reruns added (0 when no
train.py ran for a trial). The driver still runs one `train.py --check` per start, which is part of
the time measured.
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="restart.py", description="Time the rerun of a finished search.")
    parser.add_argument("--reruns", type=int, default=3, metavar="N", help="reruns to time (default: 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        data_dir = write_cifar10(Path(folder) / "data")
        scratch = Path(folder) / "scratch"
        command = [sys.executable, str(ROOT / "hyperband.py"), "--model", "small", "--width", "0.5",
                   "--max-epochs", "9", "--eta", "3", "--workers", "2", "--data-dir", str(data_dir),
                   "--scratch", str(scratch), "--quiet"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def log_sizes() -> dict[Path, int]:
            return {path: path.stat().st_size for path in scratch.glob("searches/*/logs/*")}

        before = log_sizes()
        times = []
        for _ in range(args.reruns):
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        changed = sum(1 for path, size in log_sizes().items() if before.get(path) != size)

    print("rerun seconds: " + ", ".join(f"{t:.2f}" for t in times))
    print(f"median {statistics.median(times):.2f} s (goal: under 3 s)")
    print(f"trial logs written by the reruns: {changed} (0 means no train.py ran for a trial)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
