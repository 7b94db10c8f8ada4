"""Running trials as Slurm job steps inside the current allocation, on every node and GPU it holds.

    sbatch examples/hyperband.sbatch                       # or, interactively:
    salloc --nodes=2 --gpus-per-node=4 --cpus-per-task=8 --time=4:00:00
    python hyperband.py --launcher slurm --model resnet18 --max-epochs 27 --eta 3

`SlurmLauncher` starts each trial with `srun --exclusive` (one task, one node, its CPUs and GPU), so
Slurm places the trials on free resources of the allocation and sets CUDA_VISIBLE_DEVICES for each.
It has the same start/poll/stop/kill interface as `launcher.LocalLauncher`.

Behaviour of srun and scancel that this module relies on, checked on Slurm 22.05.8 (Debian 12):

- srun returns the task's exit code, and 128 + N when the task was killed by signal N.
- SIGTERM sent to srun itself does not reach the task: srun cancels the step and the task gets
  SIGKILL. So `stop` sends SIGTERM to the step with `scancel --signal=TERM JOB.STEP`, and srun then
  returns train.py's own exit code.
- SIGKILL sent to srun leaves the step running, so `kill` uses `scancel --signal=KILL JOB.STEP`.
- srun exits with 1 when it fails itself, for instance when the step cannot be created. It then
  writes no "task 0: Exited with exit code" line, which distinguishes its failure from train.py's exit code 1.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping

from launcher import RunningTrial, Slot

log = logging.getLogger(__name__)

HOW_TO_ALLOCATE = ("start it inside a Slurm allocation, for example with "
                   "'sbatch examples/hyperband.sbatch', or interactively with "
                   "'salloc --nodes=1 --gpus-per-node=1 --cpus-per-task=4 --time=1:00:00' (on a cluster without "
                   "GPUs: 'salloc --nodes=1 --ntasks=4 --time=1:00:00') and the same command in the shell that "
                   "salloc opens")

# Variables that sbatch and salloc export and that srun would read as this step's own request, such
# as "all the job's GPUs and memory on every node". Each trial requests its own share instead.
INHERITED_STEP_REQUESTS = (
    "SLURM_CPUS_PER_GPU", "SLURM_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_SOCKET", "SLURM_GPUS_PER_TASK",
    "SLURM_MEM_PER_CPU", "SLURM_MEM_PER_GPU", "SLURM_MEM_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TRES_PER_TASK",
    "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NNODES", "SLURM_DISTRIBUTION",
)


class AllocationError(Exception):
    """The Slurm allocation is missing, or cannot hold the requested trials."""


# ---------------------------------------------------------------- the allocation


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Resources of the current Slurm job, read from the variables that sbatch and salloc set."""

    job_id: str
    cpus_per_node: tuple[int, ...]  # one entry per node, in SLURM_JOB_NODELIST order
    gpus_per_node: int  # 0 without GPUs; assumed equal on every node
    cpus_per_task: int | None  # --cpus-per-task of the job, when given

    @property
    def nodes(self) -> int:
        return len(self.cpus_per_node)


def read_allocation(env: Mapping[str, str]) -> Allocation:
    """Read the allocation from Slurm's environment variables, or raise AllocationError outside one."""
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        raise AllocationError(f"--launcher slurm needs a Slurm allocation, but SLURM_JOB_ID is not set; "
                              f"{HOW_TO_ALLOCATE}")
    nodes = positive_int(env, "SLURM_JOB_NUM_NODES") or positive_int(env, "SLURM_NNODES") or 1
    cpus = parse_cpus_per_node(env.get("SLURM_JOB_CPUS_PER_NODE", ""))
    if cpus is None:
        on_node = positive_int(env, "SLURM_CPUS_ON_NODE") or os.cpu_count() or 1
        cpus = (on_node,) * nodes
    return Allocation(job_id=job_id, cpus_per_node=cpus, gpus_per_node=gpus_per_node(env),
                      cpus_per_task=positive_int(env, "SLURM_CPUS_PER_TASK"))


def positive_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def parse_cpus_per_node(text: str) -> tuple[int, ...] | None:
    """Expand SLURM_JOB_CPUS_PER_NODE, such as '72(x2),36', into (72, 72, 36); None when malformed."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            return None
        counts += [int(match[1])] * int(match[2] or 1)
    return tuple(counts) if counts and all(counts) else None


def gpus_per_node(env: Mapping[str, str]) -> int:
    """Count the GPUs per node: SLURM_GPUS_ON_NODE, else --gpus-per-node, else the ids in SLURM_JOB_GPUS."""
    on_node = positive_int(env, "SLURM_GPUS_ON_NODE")
    if on_node:
        return on_node
    # --gpus-per-node takes "4", "a100:4" or "a100:2,v100:2".
    per_node = env.get("SLURM_GPUS_PER_NODE", "").strip()
    if per_node:
        counts = [item.rsplit(":", 1)[-1] for item in per_node.split(",")]
        if all(count.isdigit() for count in counts):
            return sum(int(count) for count in counts)
    ids = [item for item in env.get("SLURM_JOB_GPUS", "").split(",") if item.strip()]
    return len(ids)


# ---------------------------------------------------------------- slots


@dataclasses.dataclass(frozen=True)
class SlurmSlots:
    """The trials that run at once, and what each one's job step requests."""

    slots: list[Slot]
    cpus_per_trial: int
    gpus_per_trial: int


def make_slurm_slots(allocation: Allocation, gpus: int | None, per_gpu: int, workers: int | None) -> SlurmSlots:
    """Split the allocation into trial slots: one per GPU, else --workers, else one per task's CPUs.

    `gpus` (the --gpus flag) caps the GPUs used in the whole allocation, and 0 runs on the CPUs.
    A trial never spans nodes, so its CPUs come from the smallest node.
    """
    smallest_node = min(allocation.cpus_per_node)
    available_gpus = allocation.nodes * allocation.gpus_per_node
    if available_gpus and gpus != 0:
        if per_gpu > 1:
            # NOTE: Slurm gives each job step whole GPUs, so K steps on one GPU would need
            # --overlap and a choice of GPU per step that this launcher does not make.
            raise AllocationError(f"invalid --per-gpu {per_gpu} with --launcher slurm: Slurm gives each trial's "
                                  f"job step a whole GPU; use --per-gpu 1, or --launcher local on one node")
        if gpus is not None and gpus > available_gpus:
            raise AllocationError(f"invalid --gpus {gpus}: the allocation has {available_gpus} GPUs "
                                  f"({allocation.nodes} nodes x {allocation.gpus_per_node}); request more "
                                  f"with sbatch --gpus-per-node, or lower --gpus")
        count = gpus or available_gpus
        threads = max(1, smallest_node // allocation.gpus_per_node)
        slots = [Slot(name=f"slurm-gpu{k}", env={}, flags=("--device", "cuda", "--threads", str(threads)))
                 for k in range(count)]
        return SlurmSlots(slots, cpus_per_trial=threads, gpus_per_trial=1)

    if workers is not None:
        threads = max(1, min(smallest_node, sum(allocation.cpus_per_node) // workers))
        count = workers
    else:
        threads = min(smallest_node, allocation.cpus_per_task or 1)
        count = sum(cpus // threads for cpus in allocation.cpus_per_node)
    slots = [Slot(name=f"slurm-cpu{k}", env={"CUDA_VISIBLE_DEVICES": ""},
                  flags=("--device", "cpu", "--threads", str(threads)))
             for k in range(count)]
    return SlurmSlots(slots, cpus_per_trial=threads, gpus_per_trial=0)


# ---------------------------------------------------------------- scratch on a shared file system


NODE_LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")
LOCAL_FILESYSTEMS = {"tmpfs", "ramfs", "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "overlay", "f2fs"}


def node_local_reason(path: Path, mounts: str) -> str | None:
    """Return why `path` looks local to this node, or None when it looks shared between nodes.

    `mounts` is the text of /proc/mounts. The mount that contains `path` decides by its file system
    type: nfs, lustre, gpfs, beegfs or cephfs pass, while tmpfs, ext4 or xfs are node-local.
    """
    path = Path(os.path.abspath(path))
    for prefix in NODE_LOCAL_PREFIXES:
        if path == Path(prefix) or Path(prefix) in path.parents:
            return f"it is under {prefix}, which is local to each node"
    best_mount, best_type = None, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts writes a space in a mount point as \040.
        mount_point = Path(fields[1].replace("\\040", " "))
        if mount_point == path or mount_point in path.parents:
            if best_mount is None or len(mount_point.parts) >= len(best_mount.parts):
                best_mount, best_type = mount_point, fields[2]
    if best_type in LOCAL_FILESYSTEMS:
        return f"it is on a {best_type} file system mounted at {best_mount}, which is usually local to one node"
    return None


# ---------------------------------------------------------------- the launcher


@dataclasses.dataclass
class SlurmTrial(RunningTrial):
    step_name: str  # srun --job-name, unique within the job, to find the step's id for scancel
    srun_log: Path | None = None  # the file that receives srun's own messages
    srun_log_offset: int = 0  # its size when this trial started, since retries append to it


class SlurmLauncher:
    """Runs each trial as a job step of the current allocation, through srun.

    The trial's stdout and stderr go straight to its log files from the node that runs it (srun
    --output and --error, appended), so the files must be on a file system that every node shares.
    srun's own messages go to a third file beside them, ending in .srun.
    """

    def __init__(self, job_id: str, cpus_per_trial: int, gpus_per_trial: int, srun: str = "srun",
                 scancel: str = "scancel", squeue: str = "squeue"):
        self.job_id = job_id
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.srun, self.scancel, self.squeue = srun, scancel, squeue
        self._names = itertools.count()

    @classmethod
    def for_allocation(cls, allocation: Allocation, slots: SlurmSlots) -> SlurmLauncher:
        """Return a launcher for `allocation`, or raise AllocationError when Slurm's commands are missing."""
        missing = [command for command in ("srun", "scancel", "squeue") if shutil.which(command) is None]
        if missing:
            raise AllocationError(f"--launcher slurm needs Slurm's commands, but {', '.join(missing)} "
                                  f"{'is' if len(missing) == 1 else 'are'} not on PATH; load Slurm's module "
                                  f"or run on a node of the cluster")
        return cls(allocation.job_id, slots.cpus_per_trial, slots.gpus_per_trial)

    def start(self, argv: list[str], slot: Slot, stdout_path: Path, stderr_path: Path) -> SlurmTrial:
        step_name = f"hyperband-{os.getpid()}-{next(self._names)}"
        command = [self.srun, f"--jobid={self.job_id}", f"--job-name={step_name}", "--exclusive", "--ntasks=1",
                   "--nodes=1", f"--cpus-per-task={self.cpus_per_trial}",
                   # 0: the step may use the job's memory on its node without reserving it, so
                   # trials do not wait for each other's memory.
                   "--mem=0",
                   f"--output={srun_file_pattern(stdout_path)}", f"--error={srun_file_pattern(stderr_path)}",
                   "--open-mode=append"]
        if self.gpus_per_trial:
            command.append(f"--gres=gpu:{self.gpus_per_trial}")
        command += list(argv) + list(slot.flags)
        env = {name: value for name, value in os.environ.items() if name not in INHERITED_STEP_REQUESTS}
        env.update(slot.env)
        env["PYTHONUNBUFFERED"] = "1"
        srun_log = srun_log_path(stderr_path)
        with open(srun_log, "ab") as file:
            offset = file.tell()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=file, stderr=file, env=env,
                                       start_new_session=True)
        log.debug("started srun pid %d as step %s on %s: %s", process.pid, step_name, slot.name, argv)
        return SlurmTrial(process=process, slot=slot, started=time.monotonic(), step_name=step_name,
                          srun_log=srun_log, srun_log_offset=offset)

    def poll(self, trial: SlurmTrial) -> int | None:
        """Return the exit code, negative for a signal, or None while the trial runs.

        srun reports a task killed by signal N as 128 + N, and train.py exits with 128 + N when it
        stops on signal N. Both become -N, as `LocalLauncher.poll` returns for a killed process.
        A failure of srun itself, such as a step that could not be created, also counts as a kill
        (-9): it is no fault of the configuration, so the search retries it.
        NOTE: srun's exit code when a node fails mid-trial was not observed, because the test
        cluster has one node. It becomes -N or -9 here unless srun reports a task exit code.
        """
        code = trial.process.poll()
        if code is not None and 128 < code <= 128 + 64:
            return 128 - code
        if code is not None and code > 0 and not self._task_exited_with(trial, code):
            log.error("srun of step %s failed with exit code %d before its task exited: %s (log: %s)",
                      trial.step_name, code, (self._srun_messages(trial) or ["no message"])[-1], trial.srun_log)
            return -signal.SIGKILL
        return code

    def _srun_messages(self, trial: SlurmTrial) -> list[str]:
        """Return the lines srun wrote for this trial, after the offset at its start."""
        if trial.srun_log is None:
            return []
        try:
            with open(trial.srun_log, "rb") as file:
                file.seek(trial.srun_log_offset)
                return [line for line in file.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            return []

    def _task_exited_with(self, trial: SlurmTrial, code: int) -> bool:
        """Tell whether srun reported that the task itself exited with `code`."""
        return any(line.endswith(f"task 0: Exited with exit code {code}") for line in self._srun_messages(trial))

    def stop(self, trials: list[SlurmTrial], grace_seconds: float = 10.0) -> None:
        """Send SIGTERM to the trials' steps, then kill those still running after `grace_seconds`."""
        for trial in trials:
            self._signal_step(trial, "TERM")
        deadline = time.monotonic() + grace_seconds
        for trial in trials:
            try:
                trial.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("step %s did not stop within %.0f s of SIGTERM; killing it", trial.step_name,
                            grace_seconds)
                self.kill(trial)

    def kill(self, trial: SlurmTrial, wait_seconds: float = 30.0) -> None:
        """Send SIGKILL to the trial's step and wait for srun to end."""
        self._signal_step(trial, "KILL")
        try:
            trial.process.wait(timeout=wait_seconds)
        except subprocess.TimeoutExpired:
            log.error("srun pid %d of step %s still runs %.0f s after SIGKILL to the step; killing srun, "
                      "and the step may outlive it", trial.process.pid, trial.step_name, wait_seconds)
            trial.process.kill()
            trial.process.wait()

    def _signal_step(self, trial: SlurmTrial, signal_name: str) -> None:
        if trial.process.poll() is not None:
            return
        step = self._step_id(trial)
        if step is None:
            # No step yet: srun is still waiting for resources. Ending srun cancels the request.
            log.debug("step %s not found; sending SIG%s to srun pid %d", trial.step_name, signal_name,
                      trial.process.pid)
            try:
                trial.process.send_signal(getattr(signal, f"SIG{signal_name}"))
            except ProcessLookupError:
                pass
            return
        completed = subprocess.run([self.scancel, f"--signal={signal_name}", step], capture_output=True, text=True,
                                   timeout=60)
        if completed.returncode != 0:
            # A step that ended between squeue and scancel no longer exists, so scancel reports an invalid id.
            level = logging.DEBUG if "Invalid job id" in completed.stderr else logging.WARNING
            log.log(level, "scancel --signal=%s %s failed: %s", signal_name, step, completed.stderr.strip())

    def _step_id(self, trial: SlurmTrial) -> str | None:
        """Return the trial's step id, as JOB.STEP, from squeue; None when the step does not exist (yet)."""
        try:
            listing = subprocess.run([self.squeue, "--steps", "--noheader", f"--jobs={self.job_id}",
                                      "--format=%i %j"], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            log.warning("squeue timed out listing the steps of job %s", self.job_id)
            return None
        for line in listing.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1] == trial.step_name:
                return fields[0]
        return None


def srun_file_pattern(path: Path) -> str:
    """Escape `path` for srun --output, which reads '%' as the start of a replacement such as %j."""
    return str(Path(path).resolve()).replace("%", "%%")


def srun_log_path(stderr_path: Path) -> Path:
    """Return the file beside a trial's stderr log that receives srun's own messages."""
    return stderr_path.with_name(stderr_path.name.removesuffix(".log") + ".srun")
