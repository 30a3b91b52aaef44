#!/usr/bin/env bash
# The CUDA checks and GPU figures of issues 6 and 8, as one prepared run on a lent GPU machine
# (its image: Python 3.12 with CUDA torch; see docs/performance.md, "GPU"). Here, first:
#   bash scripts/gpu-wheels.sh          # the storage/cluster wheels that image lacks, into .whl/
# then, through the device tool, from the repository root, carrying .whl:
#   bash scripts/gpu-check.sh           # results under $OUT (or ./gpu-out), about 8-10 minutes
# Every step has its own time limit and the script goes on after a failure, so one broken step
# still leaves the other figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its output in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
}
step env 60 $PY -c "import torch, zarr, dask, simaq_factory; print(torch.__version__, torch.cuda.get_device_name(0), zarr.__version__, dask.__version__)"
step tests 360 $PY -m pytest -q -p no:cacheprovider -m "not slow" tests/test_gpu.py tests/test_tomo_adjoint.py \
  tests/test_phantom_voxelize.py tests/test_phantom_deform.py tests/test_tomo_kernels.py
step sample512 240 $PY benchmarks/bench_sample.py --size 512 --cells 1 4 --device cuda --repeat 3 --json "$OUT/sample512.json"
step projector 200 $PY benchmarks/bench_projector.py --device cuda --n 512 --slices 512 --backend torch triton \
  --triton-tiles 32x64x4 64x32x4 16x64x4 32x32x4 64x64x8 \
  --json "$OUT/projector512.json"
step sample512_triton 180 $PY benchmarks/bench_sample.py --size 512 --cells 1 --device cuda --repeat 3 --projector triton \
  --json "$OUT/sample512_triton.json"
step train_bench 120 $PY -m simaq_train.cli bench --features 64 --depth 5 --size 512 --batch-size 16 --amp auto \
  --device cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
