"""Search-space files: valid spaces, every kind of invalid one, and seeded sampling."""

from __future__ import annotations

import random

import pytest

import checkpoint
import space


def write(tmp_path, text: str):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_loads_every_distribution(tmp_path):
    dimensions = space.load_space(write(tmp_path, """
momentum = 0.8
[lr]
log-uniform = [0.001, 0.1]
[lr-decay]
uniform = [0.1, 0.9]
[lr-step]
int = [2, 5]
[batch-size]
choice = [32, 64]
"""))
    by_field = {d.field: d for d in dimensions}
    assert by_field["momentum"].distribution == "fixed"
    assert by_field["lr"].values == (0.001, 0.1)
    assert by_field["lr_step"].distribution == "int"
    assert by_field["batch_size"].values == (32, 64)


def test_samples_stay_in_range(tmp_path):
    dimensions = space.load_space(write(tmp_path, """
[lr]
log-uniform = [0.001, 0.1]
[lr-step]
int = [2, 5]
[batch-size]
choice = [32, 64]
"""))
    configs = space.sample_configs(dimensions, 200, random.Random(0), checkpoint.Config())
    assert all(0.001 <= c.lr <= 0.1 for c in configs)
    assert {c.lr_step for c in configs} == {2, 3, 4, 5}
    assert {c.batch_size for c in configs} == {32, 64}


def test_sampling_is_seeded():
    dimensions = space.default_space(9)
    first = space.sample_configs(dimensions, 5, random.Random(7), checkpoint.Config())
    second = space.sample_configs(dimensions, 5, random.Random(7), checkpoint.Config())
    other = space.sample_configs(dimensions, 5, random.Random(8), checkpoint.Config())
    assert first == second
    assert first != other


def test_samples_rounded_to_name_precision():
    configs = space.sample_configs(space.default_space(9), 20, random.Random(0), checkpoint.Config())
    for config in configs:
        assert checkpoint.parse_name(checkpoint.format_name(config, 1, 0.5)).config == config


def test_default_space_values():
    by_field = {d.field: d for d in space.default_space(9)}
    assert by_field["lr"] == space.Dimension("lr", "log-uniform", (0.01, 0.4))
    assert by_field["lr_decay"] == space.Dimension("lr_decay", "uniform", (0.0, 0.5))
    assert by_field["batch_size"].values == (64, 128, 256)
    assert by_field["lr_step"].values == (3,)


@pytest.mark.parametrize("text, key", [
    ("learning-rate = 0.1", "learning-rate"),
    ("lr_decay = 0.1", "lr_decay"),  # flags are spelled with dashes
    ("model = 'vgg11'", "model"),
    ("[lr]\nuniform = [0.4, 0.1]", "lr"),
    ("[lr]\nuniform = [0.1, 0.1]", "lr"),
    ("[lr]\nlog-uniform = [0.0, 0.1]", "lr"),
    ("[lr]\nuniform = [0.1]", "lr"),
    ("[lr]\nuniform = 'wide'", "lr"),
    ("[lr]\nnormal = [0.1, 0.2]", "lr"),
    ("[lr]\nuniform = [0.1, 0.2]\nchoice = [0.1]", "lr"),
    ("[lr]\nchoice = []", "lr"),
    ("lr = -0.1", "lr"),
    ("lr = 'fast'", "lr"),
    ("[batch-size]\nuniform = [16.0, 64.0]", "batch-size"),
    ("[batch-size]\nchoice = [32, 0]", "batch-size"),
    ("[batch-size]\nint = [16, 64.5]", "batch-size"),
    ("[momentum]\nuniform = [0.5, 1.5]", "momentum"),
    ("[lr-step]\nint = [0, 4]", "lr-step"),
    ("seed = true", "seed"),
])
def test_invalid_space_names_key(tmp_path, text, key):
    with pytest.raises(space.SpaceError, match=key):
        space.load_space(write(tmp_path, text))


def test_empty_space_rejected(tmp_path):
    with pytest.raises(space.SpaceError, match="no hyperparameter"):
        space.load_space(write(tmp_path, ""))


def test_only_fixed_values_rejected(tmp_path):
    with pytest.raises(space.SpaceError, match="only fixed values"):
        space.load_space(write(tmp_path, "batch-size = 32\nlr = 0.1"))


def test_invalid_toml_rejected(tmp_path):
    with pytest.raises(space.SpaceError, match="not valid TOML"):
        space.load_space(write(tmp_path, "[lr\n"))
