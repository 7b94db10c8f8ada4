"""Starting trials: slots (a GPU share or a group of CPU cores) and the local subprocess launcher.

The search talks to a launcher through `start`, `poll` and `stop` alone, so a launcher for a
cluster scheduler can replace `LocalLauncher` without changes to the Hyperband logic.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Slot:
    """Room for one running trial: environment variables and train.py flags that place it."""

    name: str
    env: dict[str, str]
    flags: tuple[str, ...]


def visible_gpus() -> list[str]:
    """List the GPU ids this process may use, without initialising CUDA.

    CUDA_VISIBLE_DEVICES wins when set; otherwise nvidia-smi counts the GPUs, and a machine
    without it has none.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [item.strip() for item in visible.split(",") if item.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        valid = []
        for item in ids:
            if item.startswith("-"):
                break
            valid.append(item)
        return valid
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("nvidia-smi failed (%s); running without GPUs", error)
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def make_slots(gpu_ids: list[str], per_gpu: int, workers: int, cores: int) -> list[Slot]:
    """Return one slot per trial that may run at once, with the CPU cores split between them."""
    if gpu_ids:
        count = len(gpu_ids) * per_gpu
        threads = str(max(1, cores // count))
        return [Slot(name=f"gpu{gpu}.{k}", env={"CUDA_VISIBLE_DEVICES": gpu},
                     flags=("--device", "cuda", "--threads", threads))
                for gpu in gpu_ids for k in range(per_gpu)]
    threads = str(max(1, cores // workers))
    return [Slot(name=f"cpu{k}", env={"CUDA_VISIBLE_DEVICES": ""}, flags=("--device", "cpu", "--threads", threads))
            for k in range(workers)]


@dataclasses.dataclass
class RunningTrial:
    process: subprocess.Popen
    slot: Slot
    started: float  # time.monotonic() at start


class LocalLauncher:
    """Runs each trial as a subprocess of this machine, in its own process group.

    Each child writes stdout and stderr to files, never to pipes, so a talkative child cannot
    block and a child that outlives a killed driver still has somewhere to write.
    """

    def start(self, argv: list[str], slot: Slot, stdout_path: Path, stderr_path: Path) -> RunningTrial:
        env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1"}
        with open(stdout_path, "ab") as stdout, open(stderr_path, "ab") as stderr:
            process = subprocess.Popen(list(argv) + list(slot.flags), stdin=subprocess.DEVNULL, stdout=stdout,
                                       stderr=stderr, env=env, start_new_session=True)
        log.debug("started pid %d on %s: %s", process.pid, slot.name, argv)
        return RunningTrial(process=process, slot=slot, started=time.monotonic())

    def poll(self, trial: RunningTrial) -> int | None:
        """Return the exit code, negative for a signal, or None while the trial runs."""
        return trial.process.poll()

    def stop(self, trials: list[RunningTrial], grace_seconds: float = 10.0) -> None:
        """Stop the trials' process groups: SIGTERM to all, then SIGKILL to those alive after `grace_seconds`."""
        stop_process_groups([trial.process for trial in trials], grace_seconds)

    def kill(self, trial: RunningTrial) -> None:
        _signal_group(trial.process, signal.SIGKILL)
        trial.process.wait()


def stop_process_groups(processes: list[subprocess.Popen], grace_seconds: float) -> None:
    """Send SIGTERM to each process's group, wait, then SIGKILL the groups still alive after `grace_seconds`.

    Each process must lead its own group (started with start_new_session=True).
    """
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s of SIGTERM; killing it", process.pid, grace_seconds)
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
