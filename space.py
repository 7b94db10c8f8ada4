"""Search spaces: which hyperparameters a search draws, from which distributions.

A space file is TOML, keyed by train.py's flag names without the leading dashes. Each key is a
fixed value or a table with exactly one distribution:

    [lr]
    log-uniform = [0.01, 0.4]   # low, high
    [lr-decay]
    uniform = [0.0, 0.5]
    [lr-step]
    int = [2, 5]                # low, high, both included
    [batch-size]
    choice = [64, 128, 256]
    momentum = 0.9              # fixed

Every value that can be drawn is checked against train.py's rules before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from pathlib import Path

import checkpoint

DISTRIBUTIONS = ("log-uniform", "uniform", "int", "choice")
# Hyperparameters a space may set. The model, its width, the dataset, the split and the precision
# are the search's own flags, since a search compares configurations of one model on one split.
SEARCHABLE = tuple(field for field in checkpoint.RULES if field not in ("width", "split_seed", "precision"))


class SpaceError(ValueError):
    """An invalid search space; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    field: str  # Config field name, such as "lr_decay"
    distribution: str  # one of DISTRIBUTIONS, or "fixed"
    values: tuple  # (low, high) for ranges, the options for "choice", (value,) for "fixed"

    def sample(self, rng: random.Random):
        if self.distribution == "fixed":
            return self.values[0]
        if self.distribution == "choice":
            return rng.choice(self.values)
        low, high = self.values
        if self.distribution == "int":
            return rng.randint(low, high)
        if self.distribution == "uniform":
            return rng.uniform(low, high)
        return math.exp(rng.uniform(math.log(low), math.log(high)))


def flag_name(field: str) -> str:
    return field.replace("_", "-")


def default_space(max_epochs: int) -> list[Dimension]:
    """Return the default space: learning rate, its decay factor and the batch size.

    The decay step is fixed at a third of the maximum epochs, so the learning rate decays twice
    within a full-length run and the decay factor matters.
    """
    return [
        Dimension("lr", "log-uniform", (0.01, 0.4)),
        Dimension("lr_decay", "uniform", (0.0, 0.5)),
        Dimension("batch_size", "choice", (64, 128, 256)),
        Dimension("lr_step", "fixed", (max(1, max_epochs // 3),)),
    ]


def load_space(path: Path) -> list[Dimension]:
    """Read and check a space file; raise SpaceError naming the first invalid key."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as error:
        raise SpaceError(f"cannot read space file {path}: {error.strerror or error}") from error
    except tomllib.TOMLDecodeError as error:
        raise SpaceError(f"space file {path} is not valid TOML: {error}") from error
    if not table:
        raise SpaceError(f"space file {path} sets no hyperparameter")
    dimensions = [parse_dimension(key, value) for key, value in table.items()]
    if all(dimension.distribution == "fixed" for dimension in dimensions):
        raise SpaceError(f"space file {path} sets only fixed values, so every configuration would be the same; "
                         f"give at least one key a distribution ({', '.join(DISTRIBUTIONS)})")
    return dimensions


def parse_dimension(key: str, value) -> Dimension:
    field = key.replace("-", "_")
    if key != flag_name(field) or field not in SEARCHABLE:
        raise SpaceError(f"unknown key {key!r}; known keys: {', '.join(map(flag_name, SEARCHABLE))}")
    if not isinstance(value, dict):
        _check(key, field, value)
        return Dimension(field, "fixed", (value,))
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise SpaceError(f"{key}: expected a fixed value or a table with one of {', '.join(DISTRIBUTIONS)}, "
                         f"got {value!r}")
    distribution, arguments = next(iter(value.items()))
    if not isinstance(arguments, list) or not arguments:
        raise SpaceError(f"{key}: {distribution} takes a non-empty list, got {arguments!r}")

    if distribution == "choice":
        for option in arguments:
            _check(key, field, option)
        return Dimension(field, distribution, tuple(arguments))

    if len(arguments) != 2:
        raise SpaceError(f"{key}: {distribution} takes [low, high], got {arguments!r}")
    low, high = arguments
    if distribution == "int" and (field_type(field) != "int" or not all(_is_int(v) for v in arguments)):
        raise SpaceError(f"{key}: int takes integer bounds of an integer hyperparameter, got {arguments!r}")
    if distribution in ("uniform", "log-uniform") and field_type(field) != "float":
        raise SpaceError(f"{key}: is an integer hyperparameter; use int or choice, not {distribution}")
    for bound in arguments:
        _check(key, field, bound)
    if not low < high:
        raise SpaceError(f"{key}: empty or inverted range [{low}, {high}]; low must be < high")
    if distribution == "log-uniform" and low <= 0:
        raise SpaceError(f"{key}: log-uniform needs low > 0, got {low}")
    return Dimension(field, distribution, (low, high))


def field_type(field: str) -> str:
    return checkpoint.Config.__dataclass_fields__[field].type


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(key: str, field: str, value) -> None:
    if field_type(field) == "float" and _is_int(value):
        value = float(value)
    rule = checkpoint.check_value(field, value)
    if rule is not None:
        raise SpaceError(f"{key}: invalid value {value!r}, must be {rule}")


def sample_configs(space: list[Dimension], count: int, rng: random.Random, base: checkpoint.Config
                   ) -> list[checkpoint.Config]:
    """Draw `count` configurations, each starting from `base` with the space's dimensions drawn.

    Dimensions are drawn in the order given, so a seeded `rng` gives the same configurations every
    time. `Config` rounds each float to the digits the file names keep.
    """
    configs = []
    for _ in range(count):
        values = {dimension.field: dimension.sample(rng) for dimension in space}
        configs.append(dataclasses.replace(base, **values))
    return configs
