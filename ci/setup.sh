#!/usr/bin/env bash
# Create (or refresh) the project environment in .venv with the exact pins of pyproject.toml.
#
#   bash ci/setup.sh && .venv/bin/snakemake --cores 2 all
#
# Idempotent: a second call only checks a stamp (hash of pyproject.toml and this script) and the imports, in ~1 s.
# Env: VENV (default .venv), PYTHON (interpreter that creates the venv, default python3; must be 3.11).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.pipeline3d-setup"
# What must be importable for the workflow, the SLURM executor, reports and the tests (found, not imported: fast).
CHECK='import importlib.util as u, sys
missing = [m for m in ("pipeline3d", "snakemake", "snakemake_executor_plugin_slurm", "pygments", "pytest", "torch",
                       "trimesh", "h5py", "pyarrow") if u.find_spec(m) is None]
sys.exit(f"missing: {missing}" if missing else 0)'

want=$(cat pyproject.toml ci/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  echo "setup: $VENV is up to date"
else
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
      || { echo "setup: $PYTHON is not Python 3.11 (pyproject.toml requires it); set PYTHON=..." >&2; exit 1; }
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  echo "setup: installing pipeline3d (editable) and its pinned dependencies into $VENV"
  # torch/torchvision come from the local wheel store on this machine class (pip's find-links); elsewhere from PyPI.
  # snakemake[reports] adds pygments, which `snakemake --report` needs; pyproject's pin fixes snakemake's version.
  # (The grep hides this machine class's harmless "Location 'file:///opt/...' is ignored" pip warnings.)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]" "snakemake[reports]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  "$VENV/bin/python" -c "$CHECK"
  echo "$want" >"$STAMP"
fi

# `snakemake --profile slurm` looks for ./slurm: keep the link to the profile's source of truth.
if [ ! -e slurm ]; then
  ln -sfn profiles/slurm slurm
fi
echo "setup: done ($("$VENV/bin/python" -m snakemake --version | head -1) in $VENV)"
