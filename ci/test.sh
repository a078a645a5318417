#!/usr/bin/env bash
# Run the whole test suite: set up .venv if needed, start the local SLURM cluster (root only), run pytest, stop the
# cluster on exit. Extra arguments go to pytest, e.g. `bash ci/test.sh tests/unit -x`. pytest's exit code is ours.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS

# Everything runs offline: never let a library reach for a model hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

bash ci/setup.sh

slurm_up() { command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP; }
if slurm_up; then
  echo "test: using the SLURM controller already running on this machine"
  export PIPELINE3D_REQUIRE_SLURM=1
elif [ "$(id -u)" = 0 ]; then
  # Stop only what we start, whatever way this script ends.
  trap 'bash ci/stop-slurm.sh' EXIT
  bash ci/start-slurm.sh
  export PIPELINE3D_REQUIRE_SLURM=1   # from here on, a missing cluster is a failure, not a skip
else
  echo "test: not root and no SLURM running: the SLURM tests will be skipped (sudo bash ci/start-slurm.sh)" >&2
fi

echo "test: setup and cluster ready after $((SECONDS - start)) s"
status=0
.venv/bin/python -m pytest --durations=15 "$@" || status=$?
echo "test: finished in $((SECONDS - start)) s (pytest exit $status)"
exit "$status"
