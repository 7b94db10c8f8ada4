"""Both command lines over random invalid arguments: exit code 2, one error line, nothing written.

The scripts' main functions run in this process, which is fast enough for many examples. The
subprocess tests in test_train.py and test_search.py check the same contract end to end.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hyperband
import train

junk = st.sampled_from(["", "abc", "1e", "0x10", "--", "nan", "inf", "-inf", "1,5", "二"])
non_positive_float = st.floats(max_value=0.0, allow_nan=False, allow_infinity=False).map(repr)
non_positive_int = st.integers(max_value=0).map(str)
negative_int = st.integers(max_value=-1).map(str)
outside_unit = st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                         st.floats(min_value=1.0 + 1e-9, allow_nan=False, allow_infinity=False)).map(repr)
non_fraction = st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
                         st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)).map(repr)
unknown_name = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda name: name not in ("small", "vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "cifar10",
                              "cifar100"))

TRAIN_INVALID = {
    "--lr": st.one_of(non_positive_float, junk),
    "--width": st.one_of(non_positive_float, junk),
    "--lr-decay": st.one_of(outside_unit, junk),
    "--lr-step": st.one_of(non_positive_int, junk),
    "--momentum": st.one_of(st.floats(min_value=1.0, allow_nan=False, allow_infinity=False).map(repr), junk),
    "--weight-decay": st.one_of(st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False).map(repr), junk),
    "--batch-size": st.one_of(non_positive_int, junk),
    "--epochs": st.one_of(non_positive_int, junk),
    "--seed": st.one_of(negative_int, junk),
    "--val-fraction": st.one_of(non_fraction, junk),
    "--threads": st.one_of(non_positive_int, junk),
    "--lock-timeout": st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False).map(repr), junk),
    "--model": unknown_name,
    "--dataset": unknown_name,
}
HYPERBAND_INVALID = {
    "--max-epochs": st.one_of(non_positive_int, junk),
    "--eta": st.one_of(st.integers(max_value=1).map(str), junk),
    "--seed": st.one_of(negative_int, junk),
    "--width": st.one_of(non_positive_float, junk),
    "--val-fraction": st.one_of(non_fraction, junk),
    "--per-gpu": st.one_of(non_positive_int, junk),
    "--workers": st.one_of(non_positive_int, junk),
    "--gpus": st.one_of(negative_int, junk),
    "--retries": st.one_of(negative_int, junk),
    "--trial-timeout": st.one_of(non_positive_float, junk),
    "--dataset": unknown_name,
}


def flag_and_value(table: dict):
    return st.sampled_from(sorted(table)).flatmap(lambda flag: st.tuples(st.just(flag), table[flag]))


def run_main(main, argv: list[str]) -> tuple[int, str, list[str]]:
    """Run `main(argv)` in an empty folder; return the exit code, stderr and the files it left."""
    with tempfile.TemporaryDirectory() as folder:
        previous = Path.cwd()
        os.chdir(folder)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                with pytest.raises(SystemExit) as exit_info:
                    main(argv + ["--scratch", os.path.join(folder, "scratch")])
        finally:
            os.chdir(previous)
        left = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))
    return exit_info.value.code, stderr.getvalue(), left


def assert_rejected(code: int, stderr: str, left: list[str], program: str, flag: str) -> None:
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert code == 2
    assert "Traceback" not in stderr
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"{program}: error:")
    assert flag in errors[0]
    assert left == []


@settings(max_examples=150, deadline=None)
@given(flag_value=flag_and_value(TRAIN_INVALID))
def test_train_rejects_invalid_argument(flag_value):
    flag, value = flag_value
    code, stderr, left = run_main(train.main, [f"{flag}={value}"])
    assert_rejected(code, stderr, left, "train.py", flag)


@settings(max_examples=150, deadline=None)
@given(flag_value=flag_and_value(HYPERBAND_INVALID))
def test_hyperband_rejects_invalid_argument(flag_value):
    flag, value = flag_value
    code, stderr, left = run_main(hyperband.main, [f"{flag}={value}"])
    assert_rejected(code, stderr, left, "hyperband.py", flag)
