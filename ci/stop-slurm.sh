#!/usr/bin/env bash
# Stop the daemons ci/start-slurm.sh started, by their recorded PIDs (never by name), newest first.
# Safe to call twice, or when nothing was started. Env: SLURM_CI_DIR (default /tmp/pipeline3d-slurm).
set -uo pipefail
D=${SLURM_CI_DIR:-/tmp/pipeline3d-slurm}

for name in slurmd slurmctld munged; do
  pidfile="$D/$name.pid"
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop-slurm: $name ($pid) ignored SIGTERM for 10 s; killing it" >&2
      kill -KILL "$pid"
    fi
  fi
  rm -f "$pidfile"
done
echo "stop-slurm: stopped"
