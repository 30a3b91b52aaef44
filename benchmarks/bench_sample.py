"""Per-stage time of one sample (the paper's Table 1), printed as a table and optionally as JSON.

    python benchmarks/bench_sample.py --size 128 --cells 1 2 --device cpu --repeat 2
    python benchmarks/bench_sample.py --size 512 --cells 1 --device cuda --json out.json

Stages are timed inside ``render_sample`` (CUDA synchronised between stages). The first sample is
a warm-up and is not reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from simaq_factory.device import resolve_device
from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import resolve
from simaq_factory.versions import software_versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cells", type=int, nargs="+", default=[1])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--span", type=float, default=100.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for cells in args.cells:
        recipe = resolve({
            "dataset": {"n_samples": args.repeat + 1, "shape": [args.size] * 3},
            "phantom": {"cells": {"count": cells}},
            "acquisition": {"tilt_span_deg": args.span},
        })
        per_stage: dict[str, list[float]] = {}
        totals = []
        for i in range(args.repeat + 1):
            t0 = time.perf_counter()
            _, record = render_sample(recipe, i, device)
            total = time.perf_counter() - t0
            if i == 0:
                continue
            totals.append(total)
            for k, v in record["timings_s"].items():
                per_stage.setdefault(k, []).append(v)
        row = {"cells": cells, "size": args.size, "device": str(device),
               **{k: statistics.median(v) for k, v in per_stage.items()},
               "total": statistics.median(totals)}
        rows.append(row)
    stages = [k for k in rows[0] if k not in ("cells", "size", "device")]
    print(f"# {args.size}^3, span {args.span:g} deg, device {device}, torch threads "
          f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print("cells " + " ".join(f"{s:>18s}" for s in stages))
    for r in rows:
        print(f"{r['cells']:5d} " + " ".join(f"{r[s]:18.3f}" for s in stages))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "versions": software_versions(),
                       "torch_threads": torch.get_num_threads(),
                       "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
                      f, indent=1)


if __name__ == "__main__":
    main()
