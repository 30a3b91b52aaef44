#!/usr/bin/env bash
# Install (if needed) and build the smoke dataset into smoke-out/ (re-running resumes/skips).
set -euo pipefail
# DIR as the caller meant it: relative to where the script was called from, not to the checkout
OUT="${1:+$(realpath -m -- "$1")}"
cd "$(dirname "$0")/.."
OUT="${OUT:-smoke-out}"
bash scripts/install.sh
.venv/bin/simaq-factory build recipes/smoke.yaml -o "$OUT"
.venv/bin/python - "$OUT" <<'PY'
import sys, zarr
g = zarr.open_group(f"{sys.argv[1]}/dataset.zarr", mode="r")
for name, a in g.arrays():
    print(f"  {name:9s} {str(a.dtype):8s} {a.shape}")
print("status:", g.attrs["status"], " recipe id:", g.attrs["recipe_id"][:12])
PY
