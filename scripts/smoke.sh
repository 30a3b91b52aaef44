#!/usr/bin/env bash
# Install (if needed) and build the smoke dataset into smoke-out/ (re-running resumes/skips).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OUT="${1:-smoke-out}"
.venv/bin/simaq-factory build recipes/smoke.yaml -o "$OUT"
.venv/bin/python - "$OUT" <<'PY'
import sys, zarr
g = zarr.open_group(f"{sys.argv[1]}/dataset.zarr", mode="r")
for name, a in g.arrays():
    print(f"  {name:9s} {str(a.dtype):8s} {a.shape}")
print("status:", g.attrs["status"], " recipe id:", g.attrs["recipe_id"][:12])
PY
