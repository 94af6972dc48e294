#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine, for tests/test_slurm.py (and for trying
# `sweep.py --launcher slurm` without a cluster). Debian/Ubuntu, as root:
#
#   bash tests/slurm/start_cluster.sh        # ~1 min the first time (apt), a few seconds after
#   sinfo; sbatch --wrap hostname; squeue    # then the usual commands work on this machine
#   bash tests/slurm/start_cluster.sh stop   # stop the daemons (the packages stay)
#
# What it does, each step skipped when already done (so it is idempotent: a running cluster -> ok):
#   1. apt-get install slurm-wlm munge (Debian 12: Slurm 22.05), unless slurmctld/slurmd/munged exist;
#   2. a munge key (/etc/munge/munge.key) and munged, running as the munge user;
#   3. /etc/slurm/slurm.conf: one node named after this machine (hostname -s, reached at 127.0.0.1)
#      with SLURM_TEST_CPUS CPUs (default 2, or 1 on a 1-core machine) and 90 % of its memory, one partition `debug`,
#      select/cons_tres (CR_CPU), JobRequeue=1, proctrack/linuxproc and task/none (no cgroups: it
#      runs in a container), no accounting (sacct has nothing; squeue and scontrol work);
#      state under /var/spool/slurm-sandbox, logs in /var/log/slurm-sandbox. A slurm.conf this script
#      did not write is never touched: the script stops and says so (use that cluster instead);
#   4. slurmctld and slurmd as root (SlurmUser=root), then waits until the node is idle.
# Exit status: 0 running; 3 cannot start here (not root, no apt, no package): the tests skip then,
# with the message this prints on stderr as their reason.
set -euo pipefail
MARK="# written by tests/slurm/start_cluster.sh"
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurm-sandbox
LOGS=/var/log/slurm-sandbox
NODE=$(hostname -s)
CPUS=${SLURM_TEST_CPUS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}  # more than the machine has: the node drains

cannot() { echo "start_cluster.sh: $*" >&2; exit 3; }

if [[ ${1:-} == stop ]]; then
    for pidfile in /run/slurmd-sandbox.pid /run/slurmctld-sandbox.pid; do
        [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2> /dev/null || true
    done
    exit 0
fi

node_up() { timeout 10 sinfo -h -p debug -o %t 2> /dev/null | grep -qE '^(idle|mix|alloc|comp)'; }
if command -v sinfo > /dev/null && node_up; then
    echo "slurm: already running (partition debug: $(sinfo -h -p debug -o '%D node(s), %c CPUs, %t'))"
    exit 0
fi
[[ $(id -u) == 0 ]] || cannot "needs root (apt-get, daemons); run it as root or use a cluster"

if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v munged > /dev/null; then
    command -v apt-get > /dev/null || cannot "no apt-get: install slurm-wlm and munge by hand"
    export DEBIAN_FRONTEND=noninteractive
    # no `apt-get update` failure check: a stale list may still hold the packages
    timeout 300 apt-get update -qq > /dev/null 2>&1 || true
    timeout 600 apt-get install -y -qq --no-install-recommends slurm-wlm munge > /tmp/slurm-apt.log 2>&1 \
        || cannot "apt-get install slurm-wlm munge failed: $(tail -n 1 /tmp/slurm-apt.log)"
fi

# munge: the key, its directories, the daemon (as the munge user: munged refuses root's key otherwise)
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
if ! munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n < /dev/null | unmunge > /dev/null || cannot "munged does not answer (see /var/log/munge/munged.log)"

if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    cannot "$CONF exists and was not written by this script: this machine has its own Slurm; start that"
fi
MEM=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
cat > "$CONF.new" << EOF
$MARK; rewritten on each start
ClusterName=sandbox
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld-sandbox.pid
SlurmdPidFile=/run/slurmd-sandbox.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
# a test's array finishes in seconds; keep the finished jobs a while so that squeue/scontrol see them
MinJobAge=600
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.new" "$CONF"

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2> /dev/null; }
alive /run/slurmctld-sandbox.pid || slurmctld -f "$CONF"   # forks into the background
for _ in $(seq 100); do timeout 5 scontrol ping 2> /dev/null | grep -q UP && break; sleep 0.2; done
alive /run/slurmd-sandbox.pid || slurmd -f "$CONF"
for _ in $(seq 150); do
    node_up && break
    # a node that was down (a previous slurmd killed): back into service
    if timeout 10 sinfo -h -p debug -o %t 2> /dev/null | grep -qE '^(down|drain)'; then
        scontrol update nodename="$NODE" state=resume 2> /dev/null || true
    fi
    sleep 0.2
done
node_up || cannot "the node did not come up: $(sinfo -h -N -o '%N %t %E' 2>&1 | head -n 1); logs in $LOGS"
echo "slurm: started (node $NODE, $CPUS CPUs, partition debug)"
