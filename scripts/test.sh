#!/usr/bin/env bash
# Install (if needed) and run the test suite (slow and GPU tests excluded; pass extra pytest args).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -m "not slow and not gpu" -q "$@"
