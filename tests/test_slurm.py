"""The Slurm launcher: slots from an allocation's variables, and searches on the local test cluster.

The cluster tests need the one-node cluster that `tools/slurm_local.sh` starts. They are skipped
when it does not respond, except under CI=true, where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import slurm
from conftest import ROOT, environment_without_gpus
import checkpoint
from test_search import (epochs_trained_per_config, first_epoch_in_progress, hyperband_command,
                         leaderboard_columns, processes_mentioning, run_hyperband, search_folder_of)


# ---------------------------------------------------------------- slots from the allocation's variables


def test_outside_allocation_raises():
    with pytest.raises(slurm.AllocationError, match="salloc"):
        slurm.read_allocation({"PATH": "/usr/bin"})


@pytest.mark.parametrize("text, expected", [
    ("8", (8,)),
    ("72(x2),36", (72, 72, 36)),
    ("4(x3)", (4, 4, 4)),
    ("", None),
    ("4(x)", None),
    ("0", None),
])
def test_cpus_per_node_parsed(text, expected):
    assert slurm.parse_cpus_per_node(text) == expected


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_GPUS_ON_NODE": "4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:2"}, 2),
    ({"SLURM_GPUS_PER_NODE": "a100:2,v100:1"}, 3),
    ({"SLURM_JOB_GPUS": "0,1,2"}, 3),
    ({}, 0),
])
def test_gpus_per_node_read(env, expected):
    assert slurm.gpus_per_node(env) == expected


# Two nodes with 4 GPUs and 32 CPUs each, as `sbatch --nodes=2 --gpus-per-node=4 --cpus-per-task=8
# --ntasks-per-node=4` sets it on the first node.
GPU_JOB = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_CPUS_PER_NODE": "32(x2)",
           "SLURM_CPUS_ON_NODE": "32", "SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_NODE": "4",
           "SLURM_JOB_GPUS": "0,1,2,3", "SLURM_CPUS_PER_TASK": "8"}
CPU_JOB = {"SLURM_JOB_ID": "43", "SLURM_JOB_NUM_NODES": "3", "SLURM_JOB_CPUS_PER_NODE": "16(x2),8",
           "SLURM_CPUS_ON_NODE": "16", "SLURM_CPUS_PER_TASK": "4"}


def test_gpu_slots_cover_every_node():
    slots = slurm.make_slurm_slots(slurm.read_allocation(GPU_JOB), gpus=None, per_gpu=1, workers=None)
    assert len(slots.slots) == 8
    assert slots.gpus_per_trial == 1
    assert slots.cpus_per_trial == 8
    assert all(slot.flags == ("--device", "cuda", "--threads", "8") for slot in slots.slots)
    # Slurm's GPU binding sets CUDA_VISIBLE_DEVICES in each step, so the slot must not.
    assert all("CUDA_VISIBLE_DEVICES" not in slot.env for slot in slots.slots)
    assert len({slot.name for slot in slots.slots}) == 8


def test_gpus_flag_caps_gpu_slots():
    slots = slurm.make_slurm_slots(slurm.read_allocation(GPU_JOB), gpus=3, per_gpu=1, workers=None)
    assert len(slots.slots) == 3


def test_gpus_zero_gives_cpu_slots():
    slots = slurm.make_slurm_slots(slurm.read_allocation(GPU_JOB), gpus=0, per_gpu=1, workers=None)
    assert slots.gpus_per_trial == 0
    assert len(slots.slots) == 8  # 64 CPUs in groups of --cpus-per-task 8
    assert all(slot.env == {"CUDA_VISIBLE_DEVICES": ""} for slot in slots.slots)


def test_too_many_gpus_rejected():
    with pytest.raises(slurm.AllocationError, match="--gpus 9"):
        slurm.make_slurm_slots(slurm.read_allocation(GPU_JOB), gpus=9, per_gpu=1, workers=None)


def test_per_gpu_above_one_rejected():
    with pytest.raises(slurm.AllocationError, match="--per-gpu 2"):
        slurm.make_slurm_slots(slurm.read_allocation(GPU_JOB), gpus=None, per_gpu=2, workers=None)


def test_cpu_slots_follow_cpus_per_task():
    slots = slurm.make_slurm_slots(slurm.read_allocation(CPU_JOB), gpus=None, per_gpu=1, workers=None)
    assert slots.cpus_per_trial == 4
    assert len(slots.slots) == 4 + 4 + 2
    assert all(slot.flags == ("--device", "cpu", "--threads", "4") for slot in slots.slots)


def test_workers_flag_splits_cpus():
    slots = slurm.make_slurm_slots(slurm.read_allocation(CPU_JOB), gpus=None, per_gpu=1, workers=5)
    assert len(slots.slots) == 5
    assert slots.cpus_per_trial == 8  # 40 CPUs / 5, and no more than the smallest node's 8


def test_workers_beyond_cpus_get_one_each():
    slots = slurm.make_slurm_slots(slurm.read_allocation(CPU_JOB), gpus=None, per_gpu=1, workers=100)
    assert len(slots.slots) == 100
    assert slots.cpus_per_trial == 1


def test_allocation_without_cpu_list_uses_node_count():
    allocation = slurm.read_allocation({"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_CPUS_ON_NODE": "6"})
    assert allocation.cpus_per_node == (6, 6)
    assert allocation.gpus_per_node == 0


@pytest.mark.parametrize("code, srun_output, expected", [
    (0, "", 0),
    (5, "srun: error: localhost: task 0: Exited with exit code 5\n", 5),
    (1, "srun: error: localhost: task 0: Exited with exit code 1\n", 1),
    (1, "srun: error: Unable to create step for job 7: Requested node configuration is not available\n", -9),
    (137, "srun: error: localhost: task 0: Killed\n", -9),
    (143, "srun: error: localhost: task 0: Exited with exit code 143\n", -15),
    (130, "", -2),
    (-9, "", -9),
])
def test_poll_maps_exit_codes(tmp_path, code, srun_output, expected):
    class Finished:
        def poll(self):
            return code

    srun_log = tmp_path / "trial.srun"
    srun_log.write_text("srun: error: localhost: task 0: Exited with exit code 1\n" + srun_output)
    # The first line is from an earlier start of the same trial, before the offset.
    trial = slurm.SlurmTrial(process=Finished(), slot=None, started=0.0, step_name="s", srun_log=srun_log,
                             srun_log_offset=len("srun: error: localhost: task 0: Exited with exit code 1\n"))
    assert slurm.SlurmLauncher("1", 1, 0).poll(trial) == expected


# ---------------------------------------------------------------- scratch on a shared file system


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
nfs1:/home /home nfs4 rw 0 0
fs:/scratch /scratch lustre rw 0 0
/dev/sdb1 /scratch/local xfs rw 0 0
"""


@pytest.mark.parametrize("path, local", [
    ("/tmp/run", True),
    ("/var/tmp/run", True),
    ("/dev/shm/run", True),
    ("/home/me/scratch", False),
    ("/scratch/me", False),
    ("/scratch/local/me", True),  # the innermost mount decides
    ("/opt/data", True),  # on the root file system
])
def test_node_local_reason(path, local):
    reason = slurm.node_local_reason(Path(path), MOUNTS)
    assert (reason is not None) == local, reason


def test_srun_file_pattern_escapes_percent(tmp_path):
    assert slurm.srun_file_pattern(tmp_path / "a%jb.log").endswith("a%%jb.log")


# ---------------------------------------------------------------- the driver's checks, without a cluster


def environment_outside_slurm() -> dict:
    return {name: value for name, value in environment_without_gpus().items() if not name.startswith("SLURM_")}


def test_driver_outside_allocation_exits_2(tmp_path, cifar_dir):
    scratch = tmp_path / "scratch"
    completed = subprocess.run(hyperband_command(scratch, cifar_dir, "--launcher", "slurm"), capture_output=True,
                               text=True, timeout=60, cwd=ROOT, env=environment_outside_slurm())
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "SLURM_JOB_ID is not set" in completed.stderr
    assert "salloc" in completed.stderr
    assert "sbatch" in completed.stderr
    assert not scratch.exists()


def test_unwritable_scratch_exits_2(cifar_dir):
    # sysfs rejects new folders even for root, who is not stopped by file permissions.
    scratch = Path("/sys/hyperband-test-scratch")

    completed = run_hyperband(scratch, cifar_dir)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert f"scratch folder {scratch} is not writable" in completed.stderr
    assert "--scratch" in completed.stderr
    assert not scratch.exists()


def test_file_as_scratch_exits_2(tmp_path, cifar_dir):
    scratch = tmp_path / "scratch"
    scratch.write_text("keep me\n")

    completed = run_hyperband(scratch, cifar_dir)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert f"--scratch {scratch}" in completed.stderr
    assert scratch.read_text() == "keep me\n"


# ---------------------------------------------------------------- on the local test cluster


def cluster_problem() -> str | None:
    """Return why the local Slurm cluster cannot run jobs, or None when it responds."""
    missing = [command for command in ("sinfo", "srun", "sbatch", "scancel", "squeue") if shutil.which(command) is None]
    if missing:
        return f"Slurm commands not installed: {', '.join(missing)}; run tools/slurm_local.sh as root"
    try:
        completed = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out; start the cluster with tools/slurm_local.sh"
    states = completed.stdout.split()
    if completed.returncode != 0 or not any(state in ("idle", "mixed", "allocated") for state in states):
        return f"the Slurm cluster does not respond or has no usable node ({completed.stderr.strip() or states}); " \
               f"start it with tools/slurm_local.sh"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = cluster_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Slurm tests: {problem}")
        pytest.skip(problem)


# Trials at once, and CPUs per trial equal to what the local launcher gives 2 workers on this machine,
# so that the Slurm search and the local one train with the same thread count.
WORKERS = 2
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)


def submit(script: Path, output: Path, wait: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
    """Submit `script` as a job of WORKERS tasks with THREADS CPUs each; with `wait`, until it ends."""
    command = ["sbatch", "--parsable", f"--ntasks={WORKERS}", f"--cpus-per-task={THREADS}", "--time=10",
               f"--output={output}", f"--chdir={ROOT}", "--job-name=hyperband-test"]
    if wait:
        command.append("--wait")
    command.append(str(script))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment_without_gpus())


def job_is_queued(job_id: str) -> bool:
    listing = subprocess.run(["squeue", "--noheader", f"--jobs={job_id}"], capture_output=True, text=True, timeout=30)
    return listing.returncode == 0 and bool(listing.stdout.strip())


def wait_until(condition, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def batch_script(path: Path, command: list[str]) -> Path:
    # exec: the driver replaces the batch shell, so scancel's SIGTERM reaches it directly.
    path.write_text("#!/bin/bash\nexec " + " ".join(f"'{word}'" for word in command) + "\n")
    return path


def test_launcher_stop_and_kill_on_cluster(cluster, tmp_path):
    # A task that reports SIGTERM, and one that ignores it and must be killed.
    task = tmp_path / "task.py"
    task.write_text(textwrap.dedent("""\
        import signal, sys, time
        def stop(signum, frame):
            print("got SIGTERM", flush=True)
            sys.exit(143)
        signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[1] == "ignore" else stop)
        if sys.argv[1] == "fail":
            sys.exit(1)
        print("ready", flush=True)
        time.sleep(120)
        """))
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""\
        import os, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        import launcher, slurm
        folder = Path({str(tmp_path)!r})
        srun = slurm.SlurmLauncher(os.environ["SLURM_JOB_ID"], cpus_per_trial=1, gpus_per_trial=0)
        slot = launcher.Slot("cpu0", {{}}, ())
        for mode in ("handle", "ignore"):
            out, err = folder / f"{{mode}}.out", folder / f"{{mode}}.log"
            trial = srun.start([sys.executable, {str(task)!r}, mode], slot, out, err)
            while not (out.exists() and "ready" in out.read_text()):
                time.sleep(0.05)
            if mode == "handle":
                srun.stop([trial], grace_seconds=20)
            else:
                srun.kill(trial)
            print(mode, srun.poll(trial), flush=True)
        # A task that fails, and an srun that fails itself, asking for more CPUs than the job has.
        for mode, cpus in (("fail", 1), ("oversized", 999)):
            srun.cpus_per_trial = cpus
            trial = srun.start([sys.executable, {str(task)!r}, "fail"], slot, folder / f"{{mode}}.out",
                               folder / f"{{mode}}.log")
            trial.process.wait()
            print(mode, srun.poll(trial), flush=True)
        """))
    output = tmp_path / "job.out"

    completed = submit(batch_script(tmp_path / "job.sh", [sys.executable, str(driver)]), output, wait=True, timeout=120)

    assert completed.returncode == 0, output.read_text() if output.exists() else completed.stderr
    lines = output.read_text().splitlines()
    assert "handle -15" in lines, lines  # train.py's exit code 143 after SIGTERM, as a signal
    assert "ignore -9" in lines, lines
    assert "fail 1" in lines, lines  # the task's own exit code
    assert "oversized -9" in lines, lines  # srun's failure, retried like a killed trial
    assert (tmp_path / "handle.out").read_text().splitlines() == ["ready", "got SIGTERM"]
    assert "got SIGTERM" not in (tmp_path / "ignore.out").read_text()


@pytest.fixture(scope="module")
def local_search(tmp_path_factory, cifar_dir, space_file):
    """Run the search of the Slurm test with the local launcher, and return its leaderboard rows."""
    scratch = tmp_path_factory.mktemp("local") / "scratch"
    completed = run_hyperband(scratch, cifar_dir, "--space", str(space_file))
    assert completed.returncode == 0, completed.stderr
    return leaderboard_columns(search_folder_of(scratch) / "leaderboard.csv")


def test_cancelled_job_resumes_identically(cluster, local_search, tmp_path, cifar_dir, space_file):
    scratch = tmp_path / "scratch"
    command = hyperband_command(scratch, cifar_dir, "--space", str(space_file), "--launcher", "slurm", "--quiet")
    script = batch_script(tmp_path / "search.sh", command)
    jobs = []
    try:
        # Cancel the job once a result is journaled and a trial is in its first epoch, so the round is half done.
        first = submit(script, tmp_path / "first.out")
        assert first.returncode == 0, first.stderr
        jobs.append(first.stdout.strip().split(";")[0])

        def mid_round() -> bool:
            journaled = any(path.stat().st_size > 0 for path in scratch.glob("searches/*/results.jsonl"))
            return journaled and first_epoch_in_progress(scratch)

        assert wait_until(lambda: mid_round() or not job_is_queued(jobs[0]), timeout=120, interval=0.02), \
            "no trial was training after a journaled result within 120 s"
        assert job_is_queued(jobs[0]), "the job finished before it could be cancelled"
        subprocess.run(["scancel", jobs[0]], check=True, timeout=30)
        assert wait_until(lambda: not job_is_queued(jobs[0]), timeout=60), "the cancelled job did not end"
        assert wait_until(lambda: not processes_mentioning(str(scratch)), timeout=30), \
            f"processes left running after scancel: {processes_mentioning(str(scratch))}"
        first_output = (tmp_path / "first.out").read_text()
        assert "Traceback" not in first_output
        assert "stopped by SIGTERM" in first_output
        assert "Leaderboard" not in first_output

        # The same job submitted again finishes the search.
        second = submit(script, tmp_path / "second.out", wait=True)
        jobs.append(second.stdout.strip().split(";")[0])
        second_output = (tmp_path / "second.out").read_text()
        assert second.returncode == 0, second_output

        folder = search_folder_of(scratch)
        assert leaderboard_columns(folder / "leaderboard.csv") == local_search
        assert "from an earlier run" not in second_output  # --quiet prints no per-trial lines
        trained = epochs_trained_per_config(folder / "logs")
        for row in local_search:
            lr = checkpoint.format_number(float(row["lr"]))
            assert sorted(trained.pop(lr, [])) == list(range(1, int(row["epochs"]) + 1)), f"lr {lr}"
        assert trained == {}, "logs of configurations missing from the leaderboard"
        assert "may be local to this node" in second_output  # pytest's tmp_path is under /tmp
    finally:
        for job in jobs:
            subprocess.run(["scancel", job], timeout=30)
