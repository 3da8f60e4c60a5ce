#!/usr/bin/env bash
# galspec-batch's test cluster: a REAL single-node SLURM cluster on this machine (Debian 12 /
# slurm 22.05, as root, no systemd needed), started by the test suite (tests/conftest.py,
# fixture `slurm_cluster`) and by .ci/run; stop it with down.sh. Not for production sites.
# Idempotent: installs packages if missing, starts only what is not running.
# Afterwards:  export SLURM_CONF=$SLURM_TEST_BASE/etc/slurm.conf   (also symlinked to /etc/slurm/slurm.conf)
# Env knobs:   SLURM_TEST_BASE (default /tmp/galspec-slurm)
#              SLURM_TEST_CPUS (default: real CPU count; larger => oversubscribe via config_overrides)
#              SLURM_TEST_MEM_MB (default: real memory as reported by `slurmd -C`)
#              SLURM_TEST_CGROUP=1 (optional: proctrack/task cgroup => --mem really enforced (OOM-kill);
#                                   default uses linuxproc/none, which needs no cgroup support at all)
set -euo pipefail
BASE=${SLURM_TEST_BASE:-/tmp/galspec-slurm}
export SLURM_CONF=$BASE/etc/slurm.conf
HOST=$(hostname -s)
[ "$(id -u)" = 0 ] || { echo "slurm_up.sh must run as root" >&2; exit 1; }

# --- 0. packages (8 debs, ~16 s) -------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# --- 1. hostname must resolve (slurmctld/slurmd look the node up by name) ----------------------
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts

# --- 2. munge (auth) ---------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then   # normally created by the package's postinst
  install -d -o munge -g munge -m 700 /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge /var/lib/munge
install -d -o munge -g munge -m 700 /var/log/munge
mkdir -p "$BASE"/{etc,state,spool,log,run}
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force   # daemonizes; pid in /run/munge/munged.pid
  touch "$BASE/run/munged.started-by-us"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- 3. slurm.conf (regenerated each time; content is deterministic) ---------------------------
HW=$(slurmd -C | head -1)                                  # NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105
REAL_CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
REAL_MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
CPUS=${SLURM_TEST_CPUS:-$REAL_CPUS}
MEM=${SLURM_TEST_MEM_MB:-$REAL_MEM}
if [ "$CPUS" = "$REAL_CPUS" ] && [ "$MEM" -le "$REAL_MEM" ]; then
  NODELINE="$HW"; NODELINE="${NODELINE% RealMemory=*} RealMemory=$MEM"; OVERRIDES=""
else
  NODELINE="NodeName=$HOST CPUs=$CPUS RealMemory=$MEM"; OVERRIDES="SlurmdParameters=config_overrides"
fi
if [ "${SLURM_TEST_CGROUP:-0}" = 1 ]; then
  PROCTRACK=proctrack/cgroup; TASK=task/cgroup
  printf 'CgroupPlugin=autodetect\nConstrainCores=yes\nConstrainRAMSpace=yes\n' > "$BASE/etc/cgroup.conf"
else
  PROCTRACK=proctrack/linuxproc; TASK=task/none; rm -f "$BASE/etc/cgroup.conf"
fi
cat > "$SLURM_CONF.new" <<EOF
ClusterName=testcluster
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=$PROCTRACK
TaskPlugin=$TASK
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without this a job that omits --mem is given the WHOLE node's memory and blocks all other jobs
DefMemPerCPU=$((MEM / CPUS))
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
$OVERRIDES
$NODELINE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mv "$SLURM_CONF.new" "$SLURM_CONF"
# let plain `sinfo`/`sbatch` work without SLURM_CONF, unless a foreign config already exists
if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
  mkdir -p /etc/slurm && ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
fi

# running = pid file names a live, non-zombie process with the expected name (PID 1 here reaps late)
alive() { local p; p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] || return 1
  [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] && grep -qs '^State:[[:space:]]*[^Z[:space:]]' /proc/"$p"/status; }

# --- 4. daemons (they daemonize themselves; no systemd) ----------------------------------------
alive "$BASE/run/slurmctld.pid" slurmctld || /usr/sbin/slurmctld -i
alive "$BASE/run/slurmd.pid" slurmd       || /usr/sbin/slurmd

# --- 5. wait until the node is schedulable ------------------------------------------------------
st=""
for i in $(seq 300); do                                     # <= ~30-60 s
  st=$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  case "$st" in *'*'*) ;; idle*|mixed*|allocated*|completing*) break;; esac   # '*' = not responding
  # a node left DOWN/DRAIN by an earlier unclean stop: resume it
  if [ $((i % 30)) = 0 ]; then case "$st" in down*|drain*) scontrol update nodename="$HOST" state=resume || true;; esac; fi
  sleep 0.1
done
case "$st" in *'*'*) echo "node $HOST not responding" >&2; exit 1;; idle*|mixed*|allocated*|completing*) ;; *)
  echo "node $HOST not ready (state='$st'); see $BASE/log/" >&2; exit 1;;
esac
echo "SLURM up: SLURM_CONF=$SLURM_CONF node=$HOST state=$st"
