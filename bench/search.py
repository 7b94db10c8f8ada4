"""Where a real search's time goes: epochs trained against the plan, and slot utilisation.

    python bench/search.py --data-dir ~/data                      # vgg11 at width 0.25, R=9, eta=3, 2 workers
    python bench/search.py                                        # the small model on tiny generated data

It runs hyperband.py once in a fresh scratch folder and reads what the search recorded: every
trial's start time, duration and epochs trained (rounds.json) and each trained epoch's duration
(the history in the checkpoints). It prints:

- the epochs actually trained, against the plan's total with checkpoint reuse (they must be
  equal) and without reuse (the saving);
- slot utilisation: the seconds that trials ran, summed, over slots times the search's wall time;
- where the rest of the slot time went. Trial start-up and shut-down is time inside a trial but
  outside its epochs. Idle slots while other trials ran mean that every trial left to start waited
  for its round's slowest trial to end. Idle slots while no trial ran are driver work: its start-up,
  the report and the plots.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import plan  # noqa: E402  (needs the path set above)
import rounds  # noqa: E402
from tiny_cifar import write_cifar10  # noqa: E402


def training_seconds(checkpoint_path: str | None) -> float:
    """Return the summed durations of every epoch in a checkpoint's history."""
    if checkpoint_path is None:  # a trial that failed before its first checkpoint
        return 0.0
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    return sum(entry["epoch_seconds"] for entry in state["history"])


def idle_slot_seconds(results, slots: int, begin: float, end: float) -> tuple[float, float]:
    """Split the slot-seconds that no trial used between `begin` and `end` in two.

    Returns (waiting, driver): idle slot time while at least one trial ran, when every trial left
    to start waited for a round to finish, and idle slot time while no trial ran at all.
    """
    events = sorted([(result.started, 1) for result in results]
                    + [(result.started + result.seconds, -1) for result in results])
    waiting = driver = 0.0
    running, previous = 0, begin
    for time_point, change in events + [(end, 0)]:
        idle = (slots - min(running, slots)) * (time_point - previous)
        if running:
            waiting += idle
        else:
            driver += idle
        running += change
        previous = time_point
    return waiting, driver


def main() -> int:
    parser = argparse.ArgumentParser(prog="search.py", description="Measure where a search's time goes.")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder with cifar-10-batches-py (default: tiny generated data and the small model)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="model (default: vgg11 with --data-dir, else small)")
    parser.add_argument("--width", default="0.25", metavar="FACTOR", help="its width (default: 0.25)")
    parser.add_argument("--max-epochs", default="9", metavar="R", help="Hyperband's R (default: 9)")
    parser.add_argument("--eta", default="3", metavar="ETA", help="Hyperband's eta (default: 3)")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="trials at once (default: 2)")
    args = parser.parse_args()
    model = args.model or ("vgg11" if args.data_dir else "small")

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data_dir = args.data_dir or write_cifar10(folder / "data")
        command = [sys.executable, str(ROOT / "hyperband.py"), "--model", model, "--width", args.width,
                   "--max-epochs", args.max_epochs, "--eta", args.eta, "--workers", str(args.workers),
                   "--data-dir", str(data_dir), "--scratch", str(folder / "scratch"), "--quiet"]

        # The search, timed from outside
        started = time.time()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - started

        # What it recorded
        search_folder = next((folder / "scratch" / "searches").iterdir())
        records = sorted(rounds.read_rounds(search_folder).values(), key=lambda r: (-r.bracket, r.index))
        brackets = plan.plan_brackets(int(args.max_epochs), int(args.eta))
        planned_with_reuse = sum(bracket.epochs_with_reuse for bracket in brackets)
        planned_without_reuse = sum(bracket.epochs_without_reuse for bracket in brackets)

        results = [result for record in records for result in record.results]
        trained = sum(result.epochs_trained for result in results)
        busy = sum(result.seconds for result in results)
        # Each configuration's last checkpoint contains the history of all its epochs, each trained once.
        last_checkpoint = {result.stem: result.checkpoint for result in results}
        training = sum(training_seconds(path) for path in last_checkpoint.values())
        waiting, driver = idle_slot_seconds(results, args.workers, started, started + wall)

    capacity = args.workers * wall
    print(f"search: {model} at width {args.width}, R={args.max_epochs}, eta={args.eta}, "
          f"{args.workers} workers, data {args.data_dir or 'tiny generated'}")
    print(f"wall time                         {wall:8.1f} s")
    print(f"epochs trained                    {trained:8.0f}")
    print(f"  planned with checkpoint reuse   {planned_with_reuse:8d}   (must be equal)")
    print(f"  planned without reuse           {planned_without_reuse:8d}   "
          f"(reuse saves {1 - planned_with_reuse / planned_without_reuse:.0%})")
    print(f"slot utilisation                  {busy / capacity:8.3f}   (goal: at least 0.85; a trial's slot "
          f"counts as busy from its launch to its exit)")
    print("slot time, as a share of slots x wall time:")
    print(f"  training epochs                 {training / capacity:8.3f}")
    print(f"  trial start-up and shut-down    {(busy - training) / capacity:8.3f}")
    print(f"  idle, waiting for rounds to end {waiting / capacity:8.3f}   (no trial was ready to start)")
    print(f"  idle, driver work               {driver / capacity:8.3f}   (no trial running)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
