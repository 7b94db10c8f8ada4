"""Reading CIFAR batches, the fixed split, the cache and the batched augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import data
from conftest import IMAGES_PER_BATCH, write_cifar10


def test_reads_all_batches(cifar_dir, tmp_path):
    arrays = data.load_arrays("cifar10", cifar_dir, tmp_path / "cache")
    assert arrays["train_x"].shape == (5 * IMAGES_PER_BATCH, 3, 32, 32)
    assert arrays["train_x"].dtype == np.uint8
    assert arrays["test_x"].shape == (IMAGES_PER_BATCH, 3, 32, 32)
    assert arrays["train_y"].dtype == np.int64


def test_accepts_batches_folder_itself(cifar_dir):
    direct = data.load_arrays("cifar10", cifar_dir / "cifar-10-batches-py", None)
    parent = data.load_arrays("cifar10", cifar_dir, None)
    assert np.array_equal(direct["train_x"], parent["train_x"])


def test_cache_matches_source(cifar_dir, tmp_path):
    fresh = data.load_arrays("cifar10", cifar_dir, tmp_path)
    (cache_file,) = tmp_path.glob("cifar10-*.npz")
    cached = data.load_arrays("cifar10", cifar_dir, tmp_path)
    for key in fresh:
        assert np.array_equal(fresh[key], cached[key])
    assert cache_file.exists()


def test_cache_rebuilt_when_source_changes(tmp_path):
    source = write_cifar10(tmp_path / "source", seed=1)
    data.load_arrays("cifar10", source, tmp_path / "cache")
    old = data.load_arrays("cifar10", source, tmp_path / "cache")["train_x"]
    (source / "cifar-10-batches-py").rename(tmp_path / "old")
    write_cifar10(tmp_path / "source", seed=2)
    new = data.load_arrays("cifar10", source, tmp_path / "cache")["train_x"]
    assert not np.array_equal(old, new)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_unreadable_batch_raises_data_error(tmp_path):
    source = write_cifar10(tmp_path / "source")
    (source / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(data.DataError, match="data_batch_3"):
        data.load_arrays("cifar10", source, None)


def test_split_fixed_and_disjoint():
    train_a, val_a = data.split_indices(1000, 0.1)
    train_b, val_b = data.split_indices(1000, 0.1)
    assert np.array_equal(train_a, train_b)
    assert np.array_equal(val_a, val_b)
    assert len(val_a) == 100
    assert not set(train_a) & set(val_a)
    assert sorted(set(train_a) | set(val_a)) == list(range(1000))


def test_split_seed_gives_other_fixed_split():
    standard_train, standard_val = data.split_indices(1000, 0.1)
    assert np.array_equal(data.split_indices(1000, 0.1, 0)[1], standard_val)
    for seed in (1, 2, data.SPLIT_SEED):
        train, val = data.split_indices(1000, 0.1, seed)
        assert np.array_equal(val, data.split_indices(1000, 0.1, seed)[1])
        assert not np.array_equal(val, standard_val)
        assert len(val) == len(standard_val)
        assert not set(train) & set(val)
    assert not np.array_equal(data.split_indices(1000, 0.1, 1)[1], data.split_indices(1000, 0.1, 2)[1])


@pytest.mark.parametrize("fraction", [0.0001, 0.9999])
def test_split_rejects_empty_side(fraction):
    with pytest.raises(data.DataError, match="val-fraction"):
        data.split_indices(100, fraction)


def test_augment_crops_and_flips():
    image = torch.arange(3 * 32 * 32, dtype=torch.int64).view(1, 3, 32, 32) % 251
    padded = torch.nn.functional.pad(image.to(torch.uint8), (data.PADDING,) * 4)
    first = torch.tensor([0])
    centre = data.augment(padded, first, torch.tensor([[4], [4]]), torch.tensor([False]))
    assert torch.equal(centre, image.to(torch.uint8))
    flipped = data.augment(padded, first, torch.tensor([[4], [4]]), torch.tensor([True]))
    assert torch.equal(flipped, image.to(torch.uint8).flip(3))
    corner = data.augment(padded, first, torch.tensor([[0], [8]]), torch.tensor([False]))
    assert torch.equal(corner[0, :, 4:, :28], image[0, :, :28, 4:].to(torch.uint8))
    assert corner[0, :, :4, :].sum() == 0  # zero padding


def test_augment_matches_per_image_crop():
    generator = torch.Generator()
    generator.manual_seed(0)
    padded = torch.randint(0, 256, (50, 3, 40, 40), dtype=torch.uint8, generator=generator)
    index = torch.randint(0, 50, (400,), generator=generator)  # repeats too, as no epoch has
    shifts = torch.randint(0, 2 * data.PADDING + 1, (2, 400), generator=generator)
    flips = torch.randint(0, 2, (400,), generator=generator).bool()
    crops = data.augment(padded, index, shifts, flips)
    for k in range(400):
        row, column = shifts[0, k].item(), shifts[1, k].item()
        expected = padded[index[k], :, row:row + 32, column:column + 32]
        if flips[k]:
            expected = expected.flip(2)
        assert torch.equal(crops[k], expected), k


def test_normalize_matches_formula():
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(data.MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.STD).view(1, 3, 1, 1) * 255
    assert torch.equal(data.normalize(images), (images.float() - mean) / std)


def test_epoch_order_fixed_by_generator(cifar_dir):
    device_data = data.load_device_data("cifar10", cifar_dir, None, 0.1, 0, torch.device("cpu"))

    def first_batch(seed):
        generator = torch.Generator()
        generator.manual_seed(seed)
        return next(data.train_batches(device_data, 16, generator))

    images_a, labels_a = first_batch(0)
    images_b, labels_b = first_batch(0)
    images_c, _ = first_batch(1)
    assert torch.equal(images_a, images_b)
    assert torch.equal(labels_a, labels_b)
    assert not torch.equal(images_a, images_c)
    assert images_a.dtype == torch.float32


def test_batches_cover_train_split_once(cifar_dir):
    device_data = data.load_device_data("cifar10", cifar_dir, None, 0.1, 0, torch.device("cpu"))
    generator = torch.Generator()
    generator.manual_seed(0)
    labels = torch.cat([y for _, y in data.train_batches(device_data, 32, generator)])
    assert len(labels) == device_data.train_count
    assert torch.equal(labels.sort().values, device_data.train_y.sort().values)


def test_reads_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for name, count in (("train", 30), ("test", 10)):
        batch = {"data": rng.randint(0, 256, (count, 3072)).astype(np.uint8),
                 "fine_labels": rng.randint(0, 100, count).tolist(), "coarse_labels": [0] * count}
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file)
    arrays = data.load_arrays("cifar100", tmp_path, None)
    assert arrays["train_x"].shape == (30, 3, 32, 32)
    assert arrays["test_y"].max() < 100
    assert data.DATASETS["cifar100"]["classes"] == 100
