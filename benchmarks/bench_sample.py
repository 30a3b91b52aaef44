"""Per-stage time of one sample (the paper's Table 1), printed as a table and optionally as JSON.

    python benchmarks/bench_sample.py --size 128 --cells 1 2 --device cpu --repeat 2
    python benchmarks/bench_sample.py --size 512 --cells 1 --device cuda --json out.json

Stages are timed inside ``render_sample`` (CUDA synchronised between stages); ``normalise`` is the
training reader's rank normalisation of the reconstruction and ``write`` writes the sample as one
shard of a Zarr store in a temporary directory (same codecs and chunks as a build). The first sample
is a warm-up and is not reported. ``banks_once`` is the one-time cost of the dataset's noise banks
(built by the driver before any shard, with a process per core for big crack banks; not part of a
sample's time), the same for every row: the banks depend on neither the cell count nor the sample.

Statistic: each stage and ``total`` is the median over ``--repeat`` samples (after the warm-up).
``process_peak_rss_gib`` is the process's *running* peak resident memory (``ru_maxrss``) when the
row finished: it includes the bank build and every earlier row, so a row can only show as much as
the rows before it (run one size and cell count per invocation to read it per row);
``peak_gpu_gib`` is the CUDA allocator's peak for that row alone. The temporary stores are removed
also when the run fails or is interrupted.
"""

from __future__ import annotations

import simaq_factory  # noqa: F401, I001 - first: it enables huge pages before torch loads

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simaq_factory.artifacts import memory_banks
from simaq_factory.acquisition.angles import a_max_for
from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import resolve
from simaq_factory.store.dataset import create_arrays, write_shard
from simaq_factory.store.layout import array_specs
from simaq_factory.recipe.fields import RecipeError
from simaq_factory.tomo.projector import BACKENDS, check_backend
from simaq_train.data.normalize import quantile_normalize

from _common import (Parser, begin_run, check_output_path, fail, int_at_least, nonneg_int, positive_float, positive_int,
                     resolve_device_arg, run_record, write_json)

MIN_SIZE = 16  # smaller volumes leave no field of view


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _recipe(args: argparse.Namespace, cells: int):
    return resolve({
        "dataset": {"n_samples": args.repeat + 1, "shape": [args.size] * 3, "samples_per_shard": 1,
                    "chunk_z": min(16, args.size)},
        "phantom": {"cells": {"count": cells}},
        "acquisition": {"tilt_span_deg": args.span},
        "execution": {"projector": args.projector},
    })


def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int_at_least(MIN_SIZE), default=128)
    ap.add_argument("--cells", type=positive_int, nargs="+", default=[1])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=positive_int, default=2, help="timed samples after the warm-up one")
    ap.add_argument("--span", type=positive_float, default=100.0)
    ap.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--projector", default="torch", choices=BACKENDS,
                    help="execution.projector: the projector backend")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    check_output_path(args.json)
    device = resolve_device_arg(args.device)
    try:
        check_backend(args.projector, device)
        for cells in args.cells:  # every recipe checked before any work
            _recipe(args, cells)
    except (RecipeError, ValueError) as err:
        fail(str(err))
    begin_run()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    try:
        rows = _run(args, device, tmp)
    except KeyboardInterrupt:
        print("bench_sample.py: interrupted; temporary stores removed", file=sys.stderr)
        sys.exit(130)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stages = [k for k in rows[0] if k not in ("cells", "size", "device", "projector")]
    print(f"# {args.size}^3, span {args.span:g} deg, device {device}, projector {args.projector}, torch threads "
          f"{torch.get_num_threads()}; seconds, median of {args.repeat} samples after a warm-up; "
          "process_peak_rss_gib is the process's running peak (includes earlier rows and the banks)")
    width = max(len(s) for s in stages) + 1
    print("cells " + " ".join(f"{s:>{width}s}" for s in stages))
    for r in rows:
        print(f"{r['cells']:5d} " + " ".join(f"{r[s]:{width}.3f}" for s in stages))
    if args.json:
        write_json(args.json, {"rows": rows, "statistic": "median over --repeat samples after one warm-up",
                               "run": run_record(args, device),
                               "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None})


def _run(args: argparse.Namespace, device: torch.device, tmp: Path) -> list[dict]:
    rows = []
    banks_once: float | None = None
    for cells in args.cells:
        recipe = _recipe(args, cells)
        specs = array_specs(recipe, a_max_for(recipe))
        store = tmp / f"cells{cells}"
        create_arrays(store, specs, {})
        per_stage: dict[str, list[float]] = {}
        totals = []
        # the noise banks are built once per dataset (by the driver), not per sample: timed apart,
        # once (they depend on neither the cell count nor the sample; later rows hit the cache)
        t_banks = time.perf_counter()
        memory_banks(recipe.artifacts, tuple(recipe.dataset.shape), recipe.seed, device, processes=None)
        banks_once = banks_once if banks_once is not None else time.perf_counter() - t_banks
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(args.repeat + 1):
            t0 = time.perf_counter()
            arrays, record = render_sample(recipe, i, device, host_views=True)  # as a build task
            t1 = time.perf_counter()
            quantile_normalize(arrays["recon"] if arrays["recon"].ndim == 3 else arrays["recon"][0])
            t2 = time.perf_counter()
            buffers = {}
            for name, spec in specs.items():  # pad to A_max as a build task does
                buf = np.full((1,) + spec.shape[1:], spec.fill_value, dtype=spec.dtype)
                a = arrays[name]
                buf[(0, *(slice(0, n) for n in a.shape))] = a
                buffers[name] = buf
            write_shard(store, specs, i, buffers)
            t3 = time.perf_counter()
            if i == 0:
                continue
            extra = {"normalise": t2 - t1, "write": t3 - t2}
            totals.append(t3 - t0)
            for k, v in {**record["timings_s"], **extra}.items():
                per_stage.setdefault(k, []).append(v)
        row = {"cells": cells, "size": args.size, "device": str(device), "projector": args.projector,
               **{k: statistics.median(v) for k, v in per_stage.items()},
               "total": statistics.median(totals), "banks_once": banks_once,
               "process_peak_rss_gib": _peak_rss_gib(),
               "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0}
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
