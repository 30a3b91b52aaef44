#!/usr/bin/env bash
# Create .venv and install simaq-factory into it, idempotently (a stamp keyed on pyproject.toml).
#
# torch is installed first and pinned (default 2.13.0, the CPU wheel), because an unpinned torch
# with none installed makes pip pull a multi-GB CUDA build. On a GPU machine, install the torch
# build you want into .venv yourself and run with SIMAQ_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH="${SIMAQ_TORCH:-2.13.0}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: simaq-factory needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)-torch-$TORCH"
stamp=.venv/.simaq-installed
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  if [ "$TORCH" != "skip" ]; then
    .venv/bin/python -m pip install -q "torch==$TORCH" numpy 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -c "import torch" || { echo "error: torch==$TORCH did not install" >&2; exit 1; }
  fi
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import simaq_factory, zarr, dask, distributed" \
    || { echo "error: installing simaq-factory failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
