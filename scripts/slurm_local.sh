#!/usr/bin/env bash
# A one-node SLURM on this machine for the SLURM tests (tests/test_slurm.py), from Debian's packages
# (slurmd slurmctld slurm-client munge; 22.05 on bookworm), as root:
#   scripts/slurm_local.sh install   # apt-get install the packages (about 10 s)
#   scripts/slurm_local.sh start     # a munge key, /etc/slurm/slurm.conf (one node, partition cpu), the daemons
#   scripts/slurm_local.sh stop
# No accounting (AccountingStorageType=none: sacct has nothing), as on many small clusters.
set -euo pipefail
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # half the machine's memory

case "${1:-}" in
install)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmd slurmctld slurm-client munge >/dev/null
  ;;
start)
  command -v slurmctld >/dev/null || { echo "slurm_local: no slurmctld; run '$0 install' first (as root)" >&2; exit 2; }
  mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  cat > "$CONF" <<CONF
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=defer_batch
MinJobAge=300
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
  for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "slurm_local: up, node $NODE ($CPUS CPUs, $MEM_MB MB), partition cpu"
      exit 0
    fi
    sleep 1
  done
  echo "slurm_local: the node did not come up; see /var/log/slurm/*.log" >&2
  exit 1
  ;;
stop)
  pkill -x slurmd || true
  pkill -x slurmctld || true
  ;;
*)
  echo "usage: $0 install|start|stop" >&2
  exit 2
  ;;
esac
