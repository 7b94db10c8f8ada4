#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine, for the tests of `hyperband.py --launcher slurm`.
#
#     sudo bash tools/slurm_local.sh          # as root, on Debian or Ubuntu
#
# It installs slurm-wlm and munge when they are missing, writes /etc/slurm/slurm.conf for one node
# called localhost with no GPUs, and starts munged, slurmctld and slurmd. Clients and slurmd use
# 127.0.0.1, but slurmctld listens on every interface, because Slurm 22.05 has no setting that binds
# it to one address (see the NOTE below). Run again, it does nothing while `sinfo` responds. The configuration
# suits a container without systemd or cgroups: processes are tracked through /proc, and tasks are
# not confined. Everything runs as root, so it is for a developer machine or CI, never a real cluster.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "error: $0 must run as root (it installs packages and starts daemons); rerun it with sudo" >&2
    exit 1
fi

# Tell whether a process with this exact command name runs; /proc needs no procps package.
is_running() {
    grep -qx -- "$1" /proc/[0-9]*/comm 2>/dev/null
}

# Already running: nothing to do.
if command -v sinfo >/dev/null && timeout 10 sinfo --noheader >/dev/null 2>&1; then
    echo "slurm_local: the cluster already responds:"
    sinfo
    exit 0
fi

# Packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q slurm-wlm munge
fi

# Munge: a key readable by the munge user only, and the daemon on its local socket.
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! is_running munged; then
    # --force: a container may leave a stale socket behind after a restart.
    runuser -u munge -- /usr/sbin/munged --force
fi

# NOTE: slurmctld listens on all interfaces, because Slurm 22.05 binds it to no single address
# (CommunicationParameters=NoInAddrAny excludes slurmctld). Clients here contact 127.0.0.1 only.

# slurm.conf. At least 4 CPUs are declared, even on a smaller machine (config_overrides accepts
# that), so that several one-CPU job steps run at once.
cores=$(nproc)
cpus=$(( cores > 4 ? cores : 4 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<EOF
# Written by tools/slurm_local.sh: a one-node cluster on localhost for tests.
ClusterName=localtest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# Bind slurmd and the client commands (srun, sbatch) to 127.0.0.1, the address that the node name
# resolves to, instead of all interfaces. slurmctld ignores this setting (see the NOTE above).
CommunicationParameters=NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Seconds between SIGTERM and SIGKILL when a job or step is cancelled or reaches its time limit.
KillWait=10
InactiveLimit=0
MinJobAge=60
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=$(hostname -s) CPUs=${cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# Daemons: slurmd runs as node "localhost" whatever this machine's host name is.
is_running slurmctld || /usr/sbin/slurmctld
is_running slurmd || /usr/sbin/slurmd -N localhost

# Wait until the node takes jobs.
for _ in $(seq 60); do
    state=$(sinfo --noheader --nodes=localhost --format=%T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated)
            echo "slurm_local: node localhost is $state"
            sinfo
            exit 0 ;;
        down*|drain*)
            scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "error: the node did not become idle within 60 s; see /var/log/slurm/slurmd.log and slurmctld.log" >&2
exit 1
