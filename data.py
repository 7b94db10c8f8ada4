"""CIFAR-10 and CIFAR-100 as uint8 tensors on the training device, with batched augmentation there.

The python versions of the datasets ("cifar-10-batches-py", "cifar-100-python") are read here with
pickle and numpy, not through torchvision, because torchvision's CIFAR classes check md5 sums of the
full dataset and so reject a subset laid out the same way. torchvision is imported only to download
missing files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

# Per-channel statistics of the CIFAR-10 training set, as used by kuangliu/pytorch-cifar.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
PADDING = 4  # pixels of zero padding around each image before the random 32x32 crop
SPLIT_SEED = 20180101  # fixes the train/validation split, whatever the training seed

DATASETS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "classes": 10,
        "download": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "classes": 100,
        "download": "CIFAR100",
    },
}


class DataError(Exception):
    """Missing or unreadable dataset files. The message names the folder where they belong."""


# ---------------------------------------------------------------- finding and reading the files


def dataset_folder(dataset: str, data_dir: Path) -> Path:
    """Return the folder with the batch files, accepting `data_dir` itself or its parent."""
    data_dir = Path(data_dir)
    name = DATASETS[dataset]["folder"]
    if data_dir.name == name:
        return data_dir
    return data_dir / name


def missing_files(dataset: str, data_dir: Path) -> list[Path]:
    folder = dataset_folder(dataset, data_dir)
    spec = DATASETS[dataset]
    return [folder / name for name in spec["train"] + spec["test"] if not (folder / name).is_file()]


def download(dataset: str, data_dir: Path) -> None:
    """Download `dataset` into `data_dir` through torchvision, or raise DataError saying where to put it."""
    spec = DATASETS[dataset]
    log.info("%s not found in %s, downloading it there", dataset, data_dir)
    missing_folders = [folder for folder in [Path(data_dir), *Path(data_dir).parents] if not folder.exists()]
    try:
        import torchvision

        getattr(torchvision.datasets, spec["download"])(root=str(data_dir), train=True, download=True)
    except Exception as error:  # no network, read-only folder, missing torchvision...
        # Leave no empty folders behind from a mistyped --data-dir.
        for folder in missing_folders:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty, or gone: keep it and its parents
        raise DataError(
            f"{dataset} is missing from {data_dir} and downloading it failed ({error}). "
            f"Put the python version of the dataset there, as {Path(data_dir) / spec['folder']}/"
            f"{{{','.join(spec['train'] + spec['test'])}}}, or pass --data-dir with the folder that holds it."
        ) from error


def ensure_files(dataset: str, data_dir: Path) -> None:
    """Download `dataset` into `data_dir` when any of its files is missing."""
    if missing_files(dataset, data_dir):
        download(dataset, data_dir)
        still_missing = missing_files(dataset, data_dir)
        if still_missing:
            raise DataError(f"{dataset} files still missing after the download: {', '.join(map(str, still_missing))}")


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as file:
            batch = pickle.load(file, encoding="latin1")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
        raise DataError(f"cannot read dataset file {path}: {error}") from error
    if len(images) != len(labels):
        raise DataError(f"dataset file {path} has {len(images)} images but {len(labels)} labels")
    return images, labels


def _read_split(dataset: str, data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    spec = DATASETS[dataset]
    folder = dataset_folder(dataset, data_dir)
    parts = [_read_batch(folder / name, spec["label_key"]) for name in spec[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------- cache under the scratch folder


def _source_key(dataset: str, data_dir: Path) -> str:
    """Return a key that changes whenever a source file changes (path, size or modification time)."""
    spec = DATASETS[dataset]
    folder = dataset_folder(dataset, data_dir).resolve()
    digest = hashlib.sha256()
    for name in spec["train"] + spec["test"]:
        stat = (folder / name).stat()
        digest.update(f"{folder / name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def load_arrays(dataset: str, data_dir: Path, cache_dir: Path | None) -> dict[str, np.ndarray]:
    """Return train and test images (N, 3, 32, 32) uint8 and labels int64 of `dataset`.

    The arrays are cached as one uncompressed .npz under `cache_dir`, which is rebuilt when a source
    file changes; the data folder itself is only read.
    """
    ensure_files(dataset, data_dir)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{dataset}-{_source_key(dataset, data_dir)}.npz"
        if cache_path.is_file():
            try:
                with np.load(cache_path) as cached:
                    return {key: cached[key] for key in cached.files}
            except (OSError, ValueError, EOFError) as error:
                log.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", cache_path, error)

    train_x, train_y = _read_split(dataset, data_dir, "train")
    test_x, test_y = _read_split(dataset, data_dir, "test")
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    if cache_path is not None:
        _write_cache(cache_path, arrays)
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        log.warning("could not write dataset cache %s (%s); continuing without it", path, error)


# ---------------------------------------------------------------- split and device tensors


def split_indices(count: int, val_fraction: float, split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return disjoint train and validation indices of `count` training images.

    The permutation comes from a fixed seed, so the split is the same on every invocation.
    `split_seed` 0 gives the standard split; any other value gives a split of its own, which is
    never the standard one's by accident, since it is seeded with the pair (SPLIT_SEED, split_seed).
    """
    val_count = int(round(count * val_fraction))
    if not 0 < val_count < count:
        raise DataError(f"--val-fraction {val_fraction} leaves {val_count} of {count} images for validation; "
                        f"choose a fraction that keeps at least one image on each side")
    seed = SPLIT_SEED if split_seed == 0 else [SPLIT_SEED, split_seed]
    order = np.random.RandomState(seed).permutation(count)
    return np.sort(order[val_count:]), np.sort(order[:val_count])


@dataclasses.dataclass
class DeviceData:
    """A dataset split held on the training device as uint8 images and int64 labels."""

    train_x: torch.Tensor  # (N, 3, 32 + 2 * PADDING, 32 + 2 * PADDING), zero-padded
    train_y: torch.Tensor
    val_x: torch.Tensor  # (M, 3, 32, 32)
    val_y: torch.Tensor
    classes: int

    @property
    def train_count(self) -> int:
        return len(self.train_y)


def load_device_data(dataset: str, data_dir: Path, cache_dir: Path | None, val_fraction: float, split_seed: int,
                     device: torch.device) -> DeviceData:
    arrays = load_arrays(dataset, data_dir, cache_dir)
    train_index, val_index = split_indices(len(arrays["train_y"]), val_fraction, split_seed)
    train_x = torch.from_numpy(arrays["train_x"][train_index]).to(device)
    # Padding once here saves a pad per batch; the crop below reads 32x32 windows out of it.
    train_x = torch.nn.functional.pad(train_x, (PADDING,) * 4)
    return DeviceData(
        train_x=train_x,
        train_y=torch.from_numpy(arrays["train_y"][train_index]).to(device),
        val_x=torch.from_numpy(arrays["train_x"][val_index]).to(device),
        val_y=torch.from_numpy(arrays["train_y"][val_index]).to(device),
        classes=DATASETS[dataset]["classes"],
    )


def load_test_data(dataset: str, data_dir: Path, cache_dir: Path | None,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the test images (N, 3, 32, 32) uint8 and labels of `dataset` on `device`.

    Only `train.py --test` reads them, to report a final accuracy; nothing is chosen by them.
    """
    arrays = load_arrays(dataset, data_dir, cache_dir)
    return torch.from_numpy(arrays["test_x"]).to(device), torch.from_numpy(arrays["test_y"]).to(device)


# ---------------------------------------------------------------- batches


_NORMALIZATION: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 images into normalised float32 images."""
    if images.device not in _NORMALIZATION:
        mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255
        _NORMALIZATION[images.device] = mean, std
    mean, std = _NORMALIZATION[images.device]
    # In place on the new float copy: the same arithmetic as (x - mean) / std, one allocation fewer.
    return images.float().sub_(mean).div_(std)


def augment(padded: torch.Tensor, index: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Return 32x32 crops of the padded images `padded[index]`, at `shifts` (2, B), mirrored where `flips`.

    There are only (2 * PADDING + 1) ** 2 windows and two orientations, so images are grouped by
    window and orientation, and each group is one plain slice of the images it selects. That is
    about 4 times faster on the CPU than a per-pixel gather, and 162 kernel launches at most on
    CUDA. Reading the groups needs one device-to-host copy of their sizes per call.
    """
    count = len(index)
    crops = torch.empty((count, padded.shape[1], 32, 32), dtype=padded.dtype, device=padded.device)
    windows = 2 * PADDING + 1
    keys = (shifts[0] * windows + shifts[1]) * 2 + flips.long()
    sorted_keys, positions = torch.sort(keys, stable=True)
    group_keys, group_sizes = torch.unique_consecutive(sorted_keys, return_counts=True)
    start = 0
    for key, size in zip(group_keys.tolist(), group_sizes.tolist()):
        members = positions[start:start + size]
        start += size
        row, rest = divmod(key, 2 * windows)
        column, flip = divmod(rest, 2)
        window = padded.index_select(0, index[members])[:, :, row:row + 32, column:column + 32]
        crops.index_copy_(0, members, window.flip(3) if flip else window)
    return crops


def train_batches(data: DeviceData, batch_size: int, generator: torch.Generator):
    """Yield (images, labels) for one epoch in a random order, augmented and normalised.

    The order, crops and flips of the whole epoch are drawn at once from `generator`, a CPU
    generator, and moved to the device in one copy. So its saved state fixes them on any device,
    and no step waits on a host-to-device copy. The whole epoch is cropped at once too, as uint8
    (150 MB for the 50,000 CIFAR training images); each batch is then normalised as it is used.
    """
    count = data.train_count
    order = torch.randperm(count, generator=generator)
    shifts = torch.randint(0, 2 * PADDING + 1, (2, count), generator=generator)
    flips = torch.randint(0, 2, (count,), generator=generator).bool()
    device = data.train_x.device
    order, shifts, flips = order.to(device), shifts.to(device), flips.to(device)
    images = augment(data.train_x, order, shifts, flips)
    labels = data.train_y[order]
    for start in range(0, count, batch_size):
        yield normalize(images[start:start + batch_size]), labels[start:start + batch_size]


def eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    for start in range(0, len(labels), batch_size):
        yield normalize(images[start:start + batch_size]), labels[start:start + batch_size]
