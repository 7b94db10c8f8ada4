"""Epoch time per model and precision, and what packing K trials on one GPU does to throughput.

    python bench/gpu.py --data-dir ~/data                 # on a CUDA machine, full-width models
    python bench/gpu.py --device cpu --tiny               # a smoke run on the CPU, in seconds

Two tables:

1. Epoch time of vgg16 and resnet18 in fp32 and bf16 (autocast), through train.py's own code
   (`training.train_one_epoch` over `data.train_batches`, data resident on the device), timed
   after one warm-up epoch so that cudnn.benchmark has chosen its kernels.
2. Aggregate training images per second with K processes on the same GPU, for K in 1, 2, 4, 8.
   Each process loads its data and model and trains one warm-up epoch. Then all start together
   from a barrier and train `--epochs` more. The aggregate is every process's images over the
   time from the barrier to the last process's end.

On the CPU (`--device cpu`) the same code runs with the cores split between the processes;
`--tiny` shrinks the data and the models so that a test can run the script in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

MODELS = ("vgg16", "resnet18")
PRECISIONS = ("fp32", "bf16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu.py", description="Time epochs and packing of trials on one device.")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder with cifar-10-batches-py (default: generated data, 5,000 images)")
    parser.add_argument("--device", default="cuda", metavar="DEVICE", help="cuda or cpu (default: cuda)")
    parser.add_argument("--width", type=float, default=1.0, metavar="FACTOR", help="model width (default: 1)")
    parser.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per step (default: 128)")
    parser.add_argument("--epochs", type=int, default=2, metavar="N", help="timed epochs per measurement (default: 2)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8], metavar="K",
                        help="process counts for the packing table (default: 1 2 4 8)")
    parser.add_argument("--packing-models", nargs="+", default=list(MODELS), metavar="NAME",
                        help="models of the packing table (default: vgg16 resnet18)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of the first table's process (default: torch's choice); packed processes "
                             "on the CPU split the cores between them")
    parser.add_argument("--tiny", action="store_true",
                        help="100 generated images, width 0.0625, batch 32, 1 thread and 1 timed epoch: a smoke run, "
                             "not a benchmark")
    # Internal: one packed process, started by this script itself.
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PRECISION", "BARRIER"), help=argparse.SUPPRESS)
    return parser


# ---------------------------------------------------------------- one model on the device


def prepare(model_name: str, precision: str, args: argparse.Namespace, data_dir: Path):
    """Load the data onto the device and build the model and optimizer; return a function that trains one epoch."""
    import torch

    import checkpoint
    import data
    import training

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    device_data = data.load_device_data("cifar10", data_dir, None, 0.1, 0, device)
    config = checkpoint.Config(model=model_name, width=args.width, lr=0.05, batch_size=args.batch_size,
                               precision=precision)
    model, optimizer = training.build_model_and_optimizer(config, device_data.classes, device)
    generator = torch.Generator()
    generator.manual_seed(0)

    def train_epoch() -> int:
        metrics = training.train_one_epoch(model, optimizer, device_data, args.batch_size, generator, precision,
                                           progress=False, description="")
        return metrics.examples  # reading the metrics back waits for the device to finish the epoch

    return train_epoch


def epoch_seconds(model_name: str, precision: str, args: argparse.Namespace, data_dir: Path) -> tuple[float, int]:
    """Return the mean seconds of one epoch after a warm-up epoch, and the images per epoch."""
    train_epoch = prepare(model_name, precision, args, data_dir)
    images = train_epoch()
    started = time.perf_counter()
    for _ in range(args.epochs):
        train_epoch()
    return (time.perf_counter() - started) / args.epochs, images


def run_worker(args: argparse.Namespace, data_dir: Path) -> int:
    """Train as one of K packed processes: warm up, wait at the barrier, train, print the timing as JSON."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model_name, precision, barrier = args.worker
    train_epoch = prepare(model_name, precision, args, data_dir)
    train_epoch()
    Path(f"{barrier}.ready-{os.getpid()}").touch()
    while not Path(barrier + ".go").exists():
        time.sleep(0.01)
    started = time.time()
    images = sum(train_epoch() for _ in range(args.epochs))
    print(json.dumps({"started": started, "ended": time.time(), "images": images}))
    return 0


# ---------------------------------------------------------------- K processes on one device


def packed_rate(model_name: str, count: int, args: argparse.Namespace, data_dir: Path, folder: Path) -> float:
    """Return the aggregate training images per second of `count` processes sharing the device."""
    barrier = folder / f"barrier-{model_name}-{count}"
    command = [sys.executable, __file__, "--worker", model_name, "fp32", str(barrier), "--data-dir", str(data_dir),
               "--device", args.device, "--width", str(args.width), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs)]
    if args.device == "cpu":
        # Each process gets its share of the cores: oversubscribed OpenMP threads spin and stall.
        threads = 1 if args.tiny else max(1, (os.cpu_count() or 1) // count)
        command += ["--threads", str(threads)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    while len(list(folder.glob(barrier.name + ".ready-*"))) < count:
        if any(process.poll() not in (None, 0) for process in processes):
            break
        time.sleep(0.05)
    go = time.time()
    (folder / (barrier.name + ".go")).touch()
    reports = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"a packed {model_name} process failed with exit code {process.returncode}")
        reports.append(json.loads(output.strip().splitlines()[-1]))
    return sum(report["images"] for report in reports) / (max(report["ended"] for report in reports) - go)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.width, args.batch_size, args.threads, args.epochs = 0.0625, 32, 1, 1

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data_dir = args.data_dir
        if data_dir is None:
            from tiny_cifar import write_cifar10

            data_dir = write_cifar10(folder / "data", images_per_batch=20 if args.tiny else 1000)
        if args.worker:
            return run_worker(args, data_dir)

        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)

        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        print(f"device: {device_name}, torch {torch.__version__}, width {args.width}, batch {args.batch_size}, "
              f"{args.epochs} timed epoch(s) after 1 warm-up")
        print()
        print("| model | precision | images per epoch | seconds per epoch | images/s |")
        print("|---|---|---|---|---|")
        for model_name in MODELS:
            for precision in PRECISIONS:
                seconds, images = epoch_seconds(model_name, precision, args, data_dir)
                print(f"| {model_name} | {precision} | {images} | {seconds:.3f} | {images / seconds:.0f} |", flush=True)

        print()
        first = args.processes[0]
        unit = "process" if first == 1 else "processes"
        print(f"| model (fp32) | processes | aggregate images/s | against {first} {unit} |")
        print("|---|---|---|---|")
        for model_name in args.packing_models:
            baseline = None
            for count in args.processes:
                rate = packed_rate(model_name, count, args, data_dir, folder)
                baseline = baseline or rate
                print(f"| {model_name} | {count} | {rate:.0f} | {rate / baseline:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
