"""Write a tiny dataset in the layout of the python version of CIFAR-10, for tests and soak runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar10(folder: Path, images_per_batch: int = 40, seed: int = 0) -> Path:
    """Write `folder`/cifar-10-batches-py with 5 training batches and a test batch; return `folder`.

    Each class gets a different mean colour, so a model can learn something in a few steps.
    """
    rng = np.random.RandomState(seed)
    batches = Path(folder) / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.randint(0, 10, images_per_batch)
        images = rng.randint(0, 96, (images_per_batch, 3, 32, 32)) + labels[:, None, None, None] * 16
        batch = {"batch_label": name, "labels": labels.tolist(),
                 "data": images.astype(np.uint8).reshape(images_per_batch, -1),
                 "filenames": [f"{name}_{i}.png" for i in range(images_per_batch)]}
        with open(batches / name, "wb") as file:
            pickle.dump(batch, file)
    with open(batches / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": images_per_batch,
                     "num_vis": 3072}, file)
    return Path(folder)
