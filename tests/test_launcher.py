"""Slots and GPU discovery of the local launcher, and what the driver imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import launcher
from conftest import ROOT


@pytest.mark.parametrize("visible, expected", [
    ("0,1", ["0", "1"]),
    ("3", ["3"]),
    ("", []),
    ("-1", []),
    ("2,-1,3", ["2"]),  # CUDA ignores everything after an invalid entry
    (" 0 , 1 ", ["0", "1"]),
])
def test_visible_gpus_from_environment(monkeypatch, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert launcher.visible_gpus() == expected


def test_gpu_slots_share_cores():
    slots = launcher.make_slots(["0", "1"], per_gpu=2, workers=1, cores=16)
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0", "0", "1", "1"]
    assert all(slot.flags == ("--device", "cuda", "--threads", "4") for slot in slots)
    assert len({slot.name for slot in slots}) == 4


def test_cpu_slots_hide_gpus():
    slots = launcher.make_slots([], per_gpu=1, workers=2, cores=2)
    assert len(slots) == 2
    assert all(slot.env["CUDA_VISIBLE_DEVICES"] == "" for slot in slots)
    assert all(slot.flags == ("--device", "cpu", "--threads", "1") for slot in slots)


def test_more_workers_than_cores_get_one_thread():
    slots = launcher.make_slots([], per_gpu=1, workers=8, cores=2)
    assert all(slot.flags[-1] == "1" for slot in slots)


def test_driver_imports_no_torch():
    code = "import sys, hyperband; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'data', 'models')))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
