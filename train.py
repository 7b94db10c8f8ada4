"""Train one configuration persistently: resume from its own checkpoints, stop at --epochs.

    python train.py --model vgg11 --width 0.25 --lr 0.05 --epochs 3 --data-dir ~/data
    python train.py --model vgg11 --width 0.25 --lr 0.05 --epochs 9 --data-dir ~/data   # trains 6 more
    python train.py --model vgg11 --width 0.25 --lr 0.05 --epochs 9 --data-dir ~/data   # trains nothing

After every epoch it validates and saves a checkpoint under
$SCRATCH/checkpoints/<dataset>/<model>/, named after the configuration, the completed epochs and the
validation accuracy. The same command run again continues exactly where it stopped. Progress goes to
stderr; the last line on stdout is one JSON object with status ("ok" or "diverged"), epoch,
val_acc, val_loss and checkpoint.

    python train.py --model vgg11 --width 0.25 --lr 0.05 --epochs 9 --data-dir ~/data --test

With --test it also evaluates the model of epoch --epochs once on the test set, stores the result
in <configuration>_ep<epochs>.test.json beside the checkpoints, and adds test_acc and test_loss to the
result line. The search never passes --test, so the test set takes part in no choice.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

import checkpoint
import cli
import history
import tensorboard_scalars
from checkpoint import Config

log = logging.getLogger("train")

DATASET_NAMES = ("cifar10", "cifar100")


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train one configuration, resuming from its checkpoints.",
        epilog="TensorBoard: when the tensorboard package is installed (" + tensorboard_scalars.INSTALL_HINT
               + "), each epoch's losses, accuracies and learning rate also go to "
                 "SCRATCH/tensorboard/<dataset>/<model>/<configuration>/.",
        formatter_class=cli.HelpFormatter,
    )
    model = parser.add_argument_group("model and data")
    model.add_argument("--model", default=defaults.model, metavar="NAME",
                       help="model name (vgg11, vgg16, resnet18, small, ...)")
    model.add_argument("--width", type=float, default=defaults.width, metavar="FACTOR",
                       help="multiplier of every layer's channel count")
    model.add_argument("--dataset", default=defaults.dataset, choices=DATASET_NAMES, help="dataset to train on")
    model.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="folder holding cifar-10-batches-py/ or cifar-100-python/ "
                            "(default: the scratch folder's data/)")
    model.add_argument("--val-fraction", type=float, default=defaults.val_fraction, metavar="FRACTION",
                       help="fraction of the training images held out for validation, by a fixed split")
    model.add_argument("--split-seed", type=int, default=defaults.split_seed, metavar="N",
                       help="seed of the train/validation split; 0 is the standard split that searches use")

    optim = parser.add_argument_group("optimisation (SGD with momentum, step learning-rate decay)")
    optim.add_argument("--lr", type=float, default=defaults.lr, metavar="RATE", help="initial learning rate")
    optim.add_argument("--lr-decay", type=float, default=defaults.lr_decay, metavar="FACTOR",
                       help="factor the learning rate is multiplied by every --lr-step epochs")
    optim.add_argument("--lr-step", type=int, default=defaults.lr_step, metavar="EPOCHS",
                       help="epochs between learning-rate decays")
    optim.add_argument("--momentum", type=float, default=defaults.momentum, metavar="M",
                       help="SGD momentum factor, in [0, 1)")
    optim.add_argument("--weight-decay", type=float, default=defaults.weight_decay, metavar="L2",
                       help="L2 penalty coefficient")
    optim.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N",
                       help="training images per step")
    optim.add_argument("--epochs", type=int, default=1, metavar="N",
                       help="train until this many epochs are completed in total, across invocations")
    optim.add_argument("--seed", type=int, default=defaults.seed, metavar="N",
                       help="seed of initialisation, data order and augmentation (not of the split)")
    optim.add_argument("--precision", default=defaults.precision, metavar="TYPE",
                       help="fp32, or bf16 to run the forward pass under autocast in bfloat16 (faster on recent "
                            "GPUs, but its results are not comparable with fp32 runs)")

    run = parser.add_argument_group("where and how to run")
    run.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                     help="folder for checkpoints and caches (default: $SCRATCH, else ./scratch)")
    run.add_argument("--device", default=None, metavar="DEVICE",
                     help="torch device such as cpu, cuda or cuda:1 (default: cuda when available, else cpu)")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="CPU threads for torch (default: torch's choice, usually one per core)")
    run.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                     help="give up after this long when another process trains this configuration "
                          "(default: wait until it is done)")
    run.add_argument("--test", action="store_true",
                     help="after training, evaluate the model of epoch --epochs once on the test set, store "
                          "test_acc and test_loss beside its checkpoints and add them to the result line "
                          "(a rerun reports the stored values)")
    run.add_argument("--quiet", action="store_true", help="print no progress, only warnings and the result line")
    run.add_argument("--check", action="store_true",
                     help="check the arguments and the dataset files (downloading them when missing), "
                          "then exit without training or writing a checkpoint")
    return parser


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Reject invalid values with exit code 2 and a message naming the flag, before anything is written."""
    cli.reject_empty_values(parser, args)
    import models

    if args.model not in models.MODELS:
        parser.error(f"invalid --model {args.model!r}: known models are {', '.join(sorted(models.MODELS))}")
    for field in checkpoint.RULES:
        rule = checkpoint.check_value(field, getattr(args, field))
        if rule is not None:
            parser.error(f"invalid --{field.replace('_', '-')} {getattr(args, field)}: must be {rule}")
    if args.epochs < 1:
        parser.error(f"invalid --epochs {args.epochs}: must be an integer >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"invalid --threads {args.threads}: must be an integer >= 1")
    if args.lock_timeout is not None and not 0 <= args.lock_timeout < math.inf:
        parser.error(f"invalid --lock-timeout {args.lock_timeout}: must be a finite number of seconds >= 0")

    if args.data_dir is not None and args.data_dir.exists():
        if not args.data_dir.is_dir() or not os.access(args.data_dir, os.R_OK | os.X_OK):
            parser.error(f"invalid --data-dir {args.data_dir}: not a readable folder")
    if args.scratch is not None and args.scratch.exists() and not args.scratch.is_dir():
        parser.error(f"invalid --scratch {args.scratch}: exists and is not a folder")


def choose_device(parser: argparse.ArgumentParser, requested: str | None):
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        parser.error(f"invalid --device {requested!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"invalid --device {requested}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"invalid --device {requested}: only cpu and cuda are supported")
    return device


# ---------------------------------------------------------------- result line


def result_line(state: dict, path: Path, epoch: int | None = None, epochs_trained: int = 0) -> dict:
    """Build the JSON result of `state`, or of its history at `epoch` when that is earlier."""
    record = state["history"][-1]
    status = state["status"]
    if epoch is not None and epoch < state["epoch"]:
        record = state["history"][epoch - 1]
        status = "ok"  # a diverged run is marked at its last epoch, so earlier ones were finite

    def finite_or_none(value: float) -> float | None:
        # JSON has no NaN or infinity, and strict parsers reject Python's extensions for them.
        return value if math.isfinite(value) else None

    return {
        "status": status,
        "epoch": record["epoch"],
        "val_acc": record["val_acc"],
        "val_loss": finite_or_none(record["val_loss"]),
        "train_loss": finite_or_none(record["train_loss"]),
        "checkpoint": str(path),
        "latest_epoch": state["epoch"],
        "epochs_trained": epochs_trained,
    }


def print_result(result: dict) -> None:
    sys.stdout.write(json.dumps(result, allow_nan=False) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- resuming


def find_resume_state(folder: Path, config: Config) -> tuple[dict, Path] | None:
    """Load the newest usable checkpoint of `config`, or return None when it has none yet.

    A checkpoint that cannot be used is renamed to `<name>.unusable` with a warning, so that it
    is reported once, kept for inspection and never mistaken for progress again. When checkpoints
    exist but none can be used, training stops instead of silently starting from scratch.
    """
    for path in checkpoint.remove_stale_temporaries(folder, config):
        log.warning("deleted %s, left behind by an interrupted save", path)
    checkpoints = checkpoint.list_checkpoints(folder, config)
    failures = []
    for parsed, path in reversed(checkpoints):
        try:
            state = checkpoint.load_checkpoint(path, config)
        except checkpoint.UnusableCheckpoint as error:
            failures.append((path, error))
            continue
        if state["epoch"] != parsed.epoch:
            failures.append((path, f"{path}: contains epoch {state['epoch']}, not the {parsed.epoch} its name gives"))
            continue
        for bad_path, error in failures:
            log.warning("skipping unusable checkpoint %s. It is kept, renamed with the suffix .unusable.", error)
            os.replace(bad_path, bad_path.with_name(bad_path.name + ".unusable"))
        if failures:
            log.warning("resuming from %s", path)
        return state, path
    if failures:
        listing = "; ".join(str(error) for _, error in failures)
        # The exact files, not a wildcard: a wildcard on the stem would also match configurations
        # whose names extend it, such as the same settings with "_bf16".
        files = [path for path, _ in failures] + [history.history_path(folder, config)]
        command = shlex.join(["rm", "-f"] + [str(path) for path in files])
        raise checkpoint.UnusableCheckpoint(
            f"none of the {len(failures)} checkpoints of this configuration can be used ({listing}). "
            f"To start this configuration over, delete them and its history: {command}")
    return None


# ---------------------------------------------------------------- training


def new_state(config: Config) -> dict:
    return {"format_version": checkpoint.FORMAT_VERSION, "config": config.to_dict(), "epoch": 0,
            "status": "ok", "history": []}


def train(args: argparse.Namespace, config: Config, device, folder: Path, scratch: Path,
          state: dict, path: Path | None) -> tuple[dict, Path, int]:
    """Train from `state` until `args.epochs` epochs are complete or the loss diverges.

    Returns the final state, its checkpoint path and the number of epochs trained here.
    """
    import torch

    import data
    import training

    # Data
    data_dir = args.data_dir if args.data_dir is not None else scratch / "data"
    device_data = data.load_device_data(config.dataset, data_dir, scratch / "cache", config.val_fraction,
                                        config.split_seed, device)

    # Model and optimizer, with the initial weights drawn from the seed
    model, optimizer = training.build_model_and_optimizer(config, device_data.classes, device)
    generator = torch.Generator()
    generator.manual_seed(config.seed)

    # Resume every piece of state that the next epoch depends on
    if state["epoch"] > 0:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log.info("resuming from %s (epoch %d)", path, state["epoch"])

    started = time.monotonic()
    wall_offset = state["history"][-1]["wall_time"] if state["history"] else 0.0
    examples_seen = state["history"][-1]["examples_seen"] if state["history"] else 0
    epochs_trained = 0
    writer = tensorboard_scalars.open_writer(scratch, config, examples_seen)
    for epoch in range(state["epoch"], args.epochs):
        # Train and validate one epoch
        lr = training.learning_rate(config.lr, config.lr_decay, config.lr_step, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        epoch_started = time.monotonic()
        train_metrics = training.train_one_epoch(model, optimizer, device_data, config.batch_size, generator,
                                                 config.precision, progress=not args.quiet,
                                                 description=f"epoch {epoch + 1}")
        val_metrics = training.evaluate(model, device_data.val_x, device_data.val_y, max(config.batch_size, 256),
                                        config.precision)
        epochs_trained += 1
        examples_seen += train_metrics.examples
        seconds = time.monotonic() - epoch_started
        diverged = not (math.isfinite(train_metrics.loss) and math.isfinite(val_metrics.loss))

        # Record it and save
        state["history"].append({
            "epoch": epoch + 1,
            "train_loss": train_metrics.loss,
            "train_acc": train_metrics.accuracy,
            "val_loss": val_metrics.loss,
            "val_acc": val_metrics.accuracy,
            "lr": lr,
            "examples_seen": examples_seen,
            "wall_time": wall_offset + time.monotonic() - started,
            "epoch_seconds": seconds,
            "timestamp": time.time(),  # seconds since the Unix epoch, at the end of this epoch
        })
        state.update({
            "epoch": epoch + 1,
            "status": "diverged" if diverged else "ok",
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {
                "data": generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            },
        })
        # Logged before the save, so that the soak harness counts an epoch lost to a kill during the
        # save as trained, and then as trained again.
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.4g  %.1fs (%.0f img/s)",
                 epoch + 1, args.epochs, train_metrics.loss, train_metrics.accuracy, val_metrics.loss,
                 val_metrics.accuracy, lr, seconds, train_metrics.examples / seconds)
        val_acc = None if diverged else checkpoint.round_accuracy(val_metrics.accuracy)
        path = folder / checkpoint.format_name(config, epoch + 1, val_acc)
        try:
            checkpoint.save_atomic(state, path)
            history.write_history(folder, state)
        except OSError as error:
            raise SaveFailed(f"saving a checkpoint in {folder} failed: {error.strerror or error}") from error
        checkpoint.prune_checkpoints(folder, config)
        # NOTE: a kill between the save and this write leaves the epoch out of TensorBoard, though the
        # checkpoint and the history file have it.
        if writer is not None:
            tensorboard_scalars.write_epoch(writer, state["history"][-1])
        if diverged:
            log.warning("loss is not finite at epoch %d: this configuration diverged", epoch + 1)
            break
    if writer is not None:
        writer.close()
    return state, path, epochs_trained


class SaveFailed(Exception):
    pass


# ---------------------------------------------------------------- test set


class TestUnavailable(Exception):
    """The model of the requested epoch is no longer on disk, so its test accuracy cannot be computed."""


def test_result(args: argparse.Namespace, config: Config, device, folder: Path, scratch: Path,
                state: dict) -> dict:
    """Return test_acc and test_loss of the model after --epochs epochs, evaluating it on the first request only.

    The first evaluation is stored with `checkpoint.write_atomic` in a JSON file beside the
    checkpoints (`checkpoint.test_result_name`), and later requests return it without reading the
    test set again. A run that diverged by then has no test result: both values are None.
    """
    import torch

    import data
    import models
    import training

    epoch = min(args.epochs, state["epoch"])
    path = folder / checkpoint.test_result_name(config, epoch)
    try:
        stored = checkpoint.read_test_result(folder, config, epoch)
    except checkpoint.UnusableCheckpoint as error:
        log.warning("ignoring the unusable test result %s; it is renamed with the suffix .unusable and "
                    "computed again", error)
        os.replace(path, path.with_name(path.name + ".unusable"))
        stored = None
    if stored is not None:
        log.info("test result of epoch %d read from %s", epoch, path)
        return {"test_acc": stored["test_acc"], "test_loss": stored["test_loss"]}

    # The weights of that epoch: in memory when it is the latest, else from its checkpoint if kept
    diverged = epoch == state["epoch"] and state["status"] == "diverged"
    if diverged:
        weights, source = None, None
    elif epoch == state["epoch"]:
        weights, source = state["model"], checkpoint.format_name(config, epoch, state["history"][-1]["val_acc"])
    else:
        kept_by_epoch = {parsed.epoch: file for parsed, file in checkpoint.list_checkpoints(folder, config)}
        if epoch not in kept_by_epoch:
            kept_epochs = ", ".join(map(str, sorted(kept_by_epoch)))
            raise TestUnavailable(
                f"the checkpoint of epoch {epoch} was not kept (kept epochs: {kept_epochs}), so its test "
                f"accuracy cannot be computed; use --epochs {state['epoch']} with --test instead")
        source = kept_by_epoch[epoch].name
        weights = checkpoint.load_checkpoint(kept_by_epoch[epoch], config)["model"]

    # Evaluate once and store
    test_acc = test_loss = None
    if not diverged:
        data_dir = args.data_dir if args.data_dir is not None else scratch / "data"
        test_x, test_y = data.load_test_data(config.dataset, data_dir, scratch / "cache", device)
        model = models.build_model(config.model, config.width, data.DATASETS[config.dataset]["classes"])
        model.load_state_dict(weights)
        model = model.to(device, memory_format=torch.channels_last)
        metrics = training.evaluate(model, test_x, test_y, max(config.batch_size, 256), config.precision)
        test_acc, test_loss = metrics.accuracy, metrics.loss if math.isfinite(metrics.loss) else None
        log.info("test accuracy after epoch %d: %.4f, loss %.4f (%d images)", epoch, metrics.accuracy,
                 metrics.loss, metrics.examples)
    stored = {"format_version": checkpoint.TEST_RESULT_FORMAT_VERSION, "config": config.to_dict(), "epoch": epoch,
              "status": "diverged" if diverged else "ok", "test_acc": test_acc, "test_loss": test_loss,
              "checkpoint": source}
    try:
        checkpoint.write_atomic((json.dumps(stored, allow_nan=False, indent=1) + "\n").encode(), path)
    except OSError as error:
        raise SaveFailed(f"saving the test result {path} failed: {error.strerror or error}") from error
    return {"test_acc": test_acc, "test_loss": test_loss}


def update_history_file(folder: Path, state: dict) -> None:
    """Rewrite the history file from the checkpoint being resumed when the two differ.

    They differ after a kill between the checkpoint's save and the history file's, and for
    checkpoints written before history files existed. A failure only warns, because the checkpoint,
    which is intact, is what training resumes from.
    """
    try:
        if history.write_history(folder, state):
            log.info("updated the history file %s", history.history_path(folder, Config(**state["config"])))
    except OSError as error:
        log.warning("could not update the history file in %s: %s", folder, error.strerror or error)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(args, parser)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    cli.raise_stopped_on_signals()
    try:
        return run(args, parser)
    except cli.Stopped as stop:
        print(f"stopped by {stop}; completed epochs are saved (an epoch in progress is lost). "
              f"Rerun the same command to resume.", file=sys.stderr)
        return 128 + stop.signum


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Resume or start the configuration of `args`, train it, print the result line; return the exit code."""
    import torch

    import data

    # Device and configuration
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = choose_device(parser, args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = Config(dataset=args.dataset, model=args.model, width=args.width, lr=args.lr, lr_decay=args.lr_decay,
                    lr_step=args.lr_step, momentum=args.momentum, weight_decay=args.weight_decay,
                    batch_size=args.batch_size, seed=args.seed, val_fraction=args.val_fraction,
                    split_seed=args.split_seed, precision=args.precision)
    for name in ("width", "lr", "lr_decay", "momentum", "weight_decay", "val_fraction"):
        if getattr(config, name) != getattr(args, name):
            log.warning("--%s %r rounded to %r, the %d significant digits that file names keep",
                        name.replace("_", "-"), getattr(args, name), getattr(config, name),
                        checkpoint.SIGNIFICANT_DIGITS)
    scratch, source = checkpoint.resolve_scratch(args.scratch)
    log.info("scratch folder: %s (%s)", scratch.resolve(), source)

    # Dataset files, before anything is written
    data_dir = args.data_dir if args.data_dir is not None else scratch / "data"
    try:
        data.ensure_files(config.dataset, data_dir)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return checkpoint.EXIT_DATA_MISSING
    if args.check:
        log.info("arguments and dataset files are valid")
        return checkpoint.EXIT_OK

    # The configuration's lock
    folder = checkpoint.config_folder(scratch, config)
    lock = checkpoint.ConfigLock(folder, config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=args.lock_timeout)
    except OSError as error:
        print(f"error: cannot create or lock the checkpoint folder {folder}: {error.strerror or error}. Pass "
              f"--scratch (or set $SCRATCH) to a folder you can write.", file=sys.stderr)
        return checkpoint.EXIT_USAGE
    except checkpoint.LockTimeout as error:
        print(f"error: another process is training this configuration: {error}. Wait for it or stop it.",
              file=sys.stderr)
        return checkpoint.EXIT_LOCK_TIMEOUT

    # Resume, train, report
    try:
        found = find_resume_state(folder, config)
        state, path = found if found is not None else (new_state(config), None)
        if found is not None:
            update_history_file(folder, state)
        epochs_trained = 0
        if state["status"] == "ok" and state["epoch"] < args.epochs:
            state, path, epochs_trained = train(args, config, device, folder, scratch, state, path)
        elif state["status"] == "diverged":
            log.info("this configuration diverged at epoch %d; nothing to train", state["epoch"])
        else:
            log.info("already trained to epoch %d (%s); nothing to train", state["epoch"], path)
        result = result_line(state, path, epoch=args.epochs, epochs_trained=epochs_trained)
        if args.test:
            result.update(test_result(args, config, device, folder, scratch, state))
        print_result(result)
        return checkpoint.EXIT_OK
    except checkpoint.UnusableCheckpoint as error:
        print(f"error: {error}", file=sys.stderr)
        return checkpoint.EXIT_UNUSABLE_CHECKPOINTS
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return checkpoint.EXIT_DATA_MISSING
    except TestUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except SaveFailed as error:
        print(f"error: {error}. The previous checkpoint is intact: free space or fix the folder, then rerun.",
              file=sys.stderr)
        return checkpoint.EXIT_SAVE_FAILED
    except torch.cuda.OutOfMemoryError as error:
        print(f"error: out of memory with --batch-size {config.batch_size} on {device}: {str(error).splitlines()[0]}",
              file=sys.stderr)
        return checkpoint.EXIT_OUT_OF_MEMORY
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
