#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost, for the SLURM tests (tests/e2e/test_slurm.py).
#
#   sudo bash ci/start-slurm.sh     # installs the Debian packages if missing, writes /etc/slurm, starts the daemons
#   bash ci/stop-slurm.sh           # stops exactly the daemons this script started
#
# No systemd, cgroups or slurmdbd: munged, slurmctld and slurmd run as background processes whose PIDs are recorded
# in $SLURM_CI_DIR/*.pid. The node offers $FAKE_GPUS fake GPUs (character devices nobody opens), so `--gpus=1` jobs
# are scheduled and get CUDA_VISIBLE_DEVICES like on a GPU node. Limits are scheduling-only (no cgroup enforcement).
# Needs root (it writes /etc/slurm and /etc/munge). Takes ~15 s on a fresh machine, < 1 s once packages are there.
#
# Env: SLURM_CI_DIR (state, logs, pid files; default /tmp/pipeline3d-slurm), FAKE_GPUS (default 2).
set -euo pipefail
D=${SLURM_CI_DIR:-/tmp/pipeline3d-slurm}
FAKE_GPUS=${FAKE_GPUS:-2}
export DEBIAN_FRONTEND=noninteractive

say() { echo "start-slurm: $*"; }
die() { echo "start-slurm: $*" >&2; exit 1; }
wait_for() {  # wait_for <tries of 0.2 s> <command...>: true as soon as the command succeeds
  local tries=$1; shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}
controller_up() { scontrol ping 2>/dev/null | grep -q UP; }
node_idle() { sinfo -h -o %T 2>/dev/null | grep -qx idle; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and writes /etc/slurm)"

# --- 1. packages (Debian 12: SLURM 22.05 + munge) --------------------------------------------------------------
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if controller_up; then
  die "a slurmctld already answers on this machine; stop it first (bash ci/stop-slurm.sh)"
fi
mkdir -p "$D"/{state,spool,log}

# --- 2. munge (authentication between the daemons and the clients) ---------------------------------------------
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
    </dev/null >"$D/log/munged.out" 2>&1 &
  echo $! >"$D/munged.pid"
  wait_for 50 munge -n </dev/null || die "munged did not start (see $D/log/munged.out)"
fi
munge -n </dev/null | unmunge >/dev/null || die "munge credentials do not round-trip"

# --- 3. fake GPUs --------------------------------------------------------------------------------------------------
# SLURM 22.05 drops a GPU without File= (node becomes INVALID_REG), and sets CUDA_VISIBLE_DEVICES only when the file
# is a character or block device: nvidia's major number (195) makes it look like /dev/nvidiaN.
for i in $(seq 0 $((FAKE_GPUS - 1))); do
  [ -e "$D/nvidia$i" ] || mknod "$D/nvidia$i" c 195 "$i" || die "cannot mknod $D/nvidia$i (fake GPU device)"
done

# --- 4. configuration ----------------------------------------------------------------------------------------------
# Node geometry exactly as slurmd sees it (otherwise "Node reconfigured socket/core boundaries"); 1 GiB memory slack
# so the node never registers with "Low RealMemory".
eval "$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=')"
MEM=$((RealMemory - 1024))
mkdir -p /etc/slurm
cat >/etc/slurm/slurm.conf <<CONF
# Written by ci/start-slurm.sh: a one-node test cluster on localhost (hostname-independent).
ClusterName=pipeline3d-ci
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.daemon.pid
SlurmdPidFile=$D/slurmd.daemon.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container: track processes via /proc, no CPU binding or memory enforcement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# schedule by cores and memory; a job without --mem gets 1000 MB per CPU instead of the whole node
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
# finished jobs stay visible to squeue for 10 min: the Snakemake plugin polls squeue (no accounting database here)
MinJobAge=600
MessageTimeout=30
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
Waittime=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUs Sockets=$SocketsPerBoard CoresPerSocket=$CoresPerSocket ThreadsPerCore=$ThreadsPerCore RealMemory=$MEM Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
cat >/etc/slurm/gres.conf <<CONF
# Written by ci/start-slurm.sh: fake GPUs backed by character devices nobody opens.
AutoDetect=off
NodeName=localhost Name=gpu File=$D/nvidia[0-$((FAKE_GPUS - 1))]
CONF

# --- 5. daemons (foreground mode, backgrounded here so we own their PIDs; -c = forget jobs of an earlier run) -----
/usr/sbin/slurmctld -D -c </dev/null >"$D/log/slurmctld.out" 2>&1 &
echo $! >"$D/slurmctld.pid"
wait_for 150 controller_up || die "slurmctld did not answer (see $D/log/slurmctld.log)"
/usr/sbin/slurmd -D -N localhost </dev/null >"$D/log/slurmd.out" 2>&1 &
echo $! >"$D/slurmd.pid"
if ! wait_for 150 node_idle; then
  scontrol show node localhost >&2 || true
  die "the node did not become idle (see $D/log/slurmd.log)"
fi
say "cluster up ($(sinfo -h -o '%P %T %c CPUs %m MB %G'); logs in $D/log)"
