"""Images per second of the input pipeline alone: ours against a torchvision DataLoader.

    python bench/pipeline.py --data-dir ~/data                      # any folder with cifar-10-batches-py
    python bench/pipeline.py                                        # tiny generated data

Both crop 32x32 out of 4 pixels of zero padding, flip half the images and normalise, over the same
training images. Ours is data.train_batches on the CPU; the reference is a DataLoader with 2
workers and RandomCrop, RandomHorizontalFlip, ToTensor and Normalize. Each is timed over whole
epochs after one warm-up epoch, alternately, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import data  # noqa: E402  (needs the path set above)
from reference import reference_loader  # noqa: E402
from tiny_cifar import write_cifar10  # noqa: E402


def images_per_second(run_epoch) -> float:
    started = time.perf_counter()
    count = run_epoch()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(prog="pipeline.py", description="Compare input pipelines.")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder with cifar-10-batches-py (default: tiny generated data)")
    parser.add_argument("--epochs", type=int, default=3, metavar="N", help="timed epochs of each (default: 3)")
    parser.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per batch (default: 128)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        data_dir = args.data_dir or write_cifar10(Path(folder) / "data", images_per_batch=1000)
        arrays = data.load_arrays("cifar10", data_dir, None)
    torch.set_num_threads(2)
    train_index, _ = data.split_indices(len(arrays["train_y"]), 0.1)
    images, labels = arrays["train_x"][train_index], arrays["train_y"][train_index]
    padded = torch.nn.functional.pad(torch.from_numpy(images), (data.PADDING,) * 4)
    device_data = data.DeviceData(padded, torch.from_numpy(labels), torch.empty(0), torch.empty(0), classes=10)

    generator = torch.Generator()
    generator.manual_seed(0)
    loader = reference_loader(images, labels, args.batch_size)

    def ours() -> int:
        return sum(len(y) for _, y in data.train_batches(device_data, args.batch_size, generator))

    def reference() -> int:
        return sum(len(y) for _, y in loader)

    ours(), reference()  # warm-up: caches, worker start
    our_rates, reference_rates = [], []
    for _ in range(args.epochs):
        our_rates.append(images_per_second(ours))
        reference_rates.append(images_per_second(reference))

    ours_median, reference_median = statistics.median(our_rates), statistics.median(reference_rates)
    print(f"training images: {len(labels)}, batch size {args.batch_size}, {args.epochs} timed epochs each")
    print(f"ours (data.train_batches)           {ours_median:10.0f} images/s")
    print(f"torchvision DataLoader, 2 workers   {reference_median:10.0f} images/s")
    print(f"ratio                               {ours_median / reference_median:10.1f} (goal: at least 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
