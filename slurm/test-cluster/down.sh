#!/usr/bin/env bash
# Stop galspec-batch's single-node test cluster started by up.sh. Kills only the daemons recorded in
# its pid files (never by name). Pass --purge to also wipe state/spool/logs/conf.
set -uo pipefail
BASE=${SLURM_TEST_BASE:-/tmp/galspec-slurm}
export SLURM_CONF=$BASE/etc/slurm.conf

# running = pid file names a live, non-zombie process with the expected name (PID 1 here reaps late)
alive() { local p; p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] || return 1
  [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ] && grep -qs '^State:[[:space:]]*[^Z[:space:]]' /proc/"$p"/status; }
stop_pidfile() {                       # TERM, wait up to 10 s, then KILL
  local f=$1 name=$2 pid
  alive "$f" "$name" || return 0
  pid=$(cat "$f"); kill "$pid" 2>/dev/null
  for _ in $(seq 100); do alive "$f" "$name" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null; return 0
}

if alive "$BASE/run/slurmctld.pid" slurmctld; then
  scancel --quiet $(timeout 10 squeue -h -o %i 2>/dev/null) 2>/dev/null || true   # kill leftover jobs
  for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
  timeout 10 scontrol shutdown 2>/dev/null || true                                       # stops slurmctld + slurmd
fi
stop_pidfile "$BASE/run/slurmd.pid" slurmd
stop_pidfile "$BASE/run/slurmctld.pid" slurmctld
if [ -e "$BASE/run/munged.started-by-us" ]; then   # only stop munged if slurm_up.sh started it
  stop_pidfile /run/munge/munged.pid munged
  rm -f "$BASE/run/munged.started-by-us"
fi
for c in /sys/fs/cgroup/*/slurm_"$(hostname -s)"; do   # only exists with SLURM_TEST_CGROUP=1
  [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
done
if [ "${1:-}" = "--purge" ]; then
  [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$SLURM_CONF" ] && rm -f /etc/slurm/slurm.conf
  rm -rf "$BASE"
fi
echo "SLURM down"
