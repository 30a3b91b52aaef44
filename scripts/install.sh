#!/usr/bin/env bash
# Create .venv and install simaq-factory into it, idempotently (a stamp keyed on pyproject.toml).
#
# torch is installed first and pinned (default 2.13.0, the CPU build: a local wheel when pip's
# find-links has one, else from PyTorch's CPU index, SIMAQ_TORCH_INDEX to override), because an
# unpinned torch with none installed makes pip pull a multi-GB CUDA build. On a GPU machine,
# install the torch build you want into .venv yourself and run with SIMAQ_TORCH=skip.
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
    echo "installing torch==$TORCH (CPU build) into .venv ..." >&2
    # the CPU build: a wheel from pip's configured local sources (find-links) if one is there,
    # else PyTorch's CPU index (plain PyPI would serve the multi-GB CUDA build on Linux)
    if .venv/bin/python -m pip install -q --no-index --no-deps "torch==$TORCH" 2>/dev/null; then
      .venv/bin/python -m pip install -q "torch==$TORCH" numpy 2>&1 | grep -v "is ignored" || true  # its deps
    else
      .venv/bin/python -m pip install -q --index-url "${SIMAQ_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
        --extra-index-url https://pypi.org/simple "torch==$TORCH" numpy 2>&1 | grep -v "is ignored" || true
    fi
    .venv/bin/python -c "import torch" || { echo "error: torch==$TORCH did not install" >&2; exit 1; }
  fi
  echo "installing simaq-factory and its test dependencies into .venv ..." >&2
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import simaq_factory, zarr, dask, distributed" \
    || { echo "error: installing simaq-factory failed" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "installed into .venv" >&2
fi
