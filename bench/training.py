"""Images per second of train.py's epoch against a plain loop over a torchvision DataLoader.

    python bench/training.py --data-dir ~/data          # any folder with cifar-10-batches-py
    python bench/training.py                            # tiny generated data

For each model (vgg11 and resnet18 at width 0.25 by default) both sides train the same model from
the same initial weights with the same SGD settings, batch size and 2 threads. Ours is
training.train_one_epoch over data.train_batches; the reference is bench/reference.py's loop, which
reads the loss back every step, over a 2-worker DataLoader. Epochs alternate after one warm-up each.
"""

from __future__ import annotations

import argparse
import copy
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
import models  # noqa: E402
import training  # noqa: E402
from reference import reference_epoch, reference_loader  # noqa: E402
from tiny_cifar import write_cifar10  # noqa: E402


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def rate(run_epoch) -> float:
    started = time.perf_counter()
    count = run_epoch()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(prog="training.py", description="Compare training epochs.")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder with cifar-10-batches-py (default: tiny generated data)")
    parser.add_argument("--models", nargs="+", default=["vgg11", "resnet18"], metavar="NAME")
    parser.add_argument("--width", type=float, default=0.25, metavar="FACTOR", help="width of the models")
    parser.add_argument("--epochs", type=int, default=2, metavar="N", help="timed epochs of each (default: 2)")
    parser.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per step (default: 128)")
    args = parser.parse_args()

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        data_dir = args.data_dir or write_cifar10(Path(folder) / "data", images_per_batch=400)
        device_data = data.load_device_data("cifar10", data_dir, None, 0.1, 0, torch.device("cpu"))
        arrays = data.load_arrays("cifar10", data_dir, None)
    train_index, _ = data.split_indices(len(arrays["train_y"]), 0.1)
    loader = reference_loader(arrays["train_x"][train_index], arrays["train_y"][train_index], args.batch_size)
    generator = torch.Generator()
    generator.manual_seed(0)

    print(f"training images: {device_data.train_count}, batch size {args.batch_size}, 2 threads, "
          f"{args.epochs} timed epochs each")
    for name in args.models:
        torch.manual_seed(0)
        ours_model = models.build_model(name, args.width, 10).to(memory_format=torch.channels_last)
        reference_model = copy.deepcopy(ours_model).to(memory_format=torch.contiguous_format)
        ours_optimizer, reference_optimizer = optimizer_for(ours_model), optimizer_for(reference_model)

        def ours() -> int:
            return training.train_one_epoch(ours_model, ours_optimizer, device_data, args.batch_size, generator,
                                            "fp32", progress=False, description="").examples

        def reference() -> int:
            return reference_epoch(reference_model, reference_optimizer, loader)

        ours(), reference()  # warm-up
        ours_rates, reference_rates = [], []
        for _ in range(args.epochs):
            ours_rates.append(rate(ours))
            reference_rates.append(rate(reference))
        ours_median, reference_median = statistics.median(ours_rates), statistics.median(reference_rates)
        print(f"{name} width {args.width:g}: ours {ours_median:.0f} images/s, reference {reference_median:.0f} "
              f"images/s, ratio {ours_median / reference_median:.2f} (goal: at least 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
