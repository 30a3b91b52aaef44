"""Build throughput (samples per minute) of ``simaq-factory build`` with 1 and 2 local workers.

Runs the real CLI in a subprocess for each worker count on a fresh output directory, times the
whole command (cluster start-up included) and reads the per-shard timings back from provenance::

    .venv/bin/python benchmarks/bench_build.py recipes/demo-cpu.yaml --workers 1 2 \
        --set dataset.n_samples=16 --json build.json

Each worker gets ``cores // workers`` torch threads (the LocalCluster default), so the comparison
is "the same machine split differently", as a user would run it; add
``--set execution.threads_per_worker=1`` to compare single-threaded workers. ``samples/min`` is over
the whole command (interpreter and cluster start-up, noise banks, the last shard's tail included);
``steady/min`` is samples × workers / summed task time, the rate once everything runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simaq_factory.versions import software_versions


def _build(recipe: str, out: Path, workers: int, cluster: str, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "simaq_factory.cli.main", "build", recipe, "-o", str(out),
           "--cluster", cluster, *(["--workers", str(workers)] if cluster != "inline" else [])]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _shard_seconds(out: Path) -> tuple[int, float]:
    samples, busy = 0, 0.0
    for p in sorted((out / "provenance").glob("*.json")):
        rec = json.loads(p.read_text())
        samples += rec["samples"][1] - rec["samples"][0]
        busy += rec["timings_s"]["total"]
    return samples, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cluster", default="local", choices=["local", "inline"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--keep", default=None, help="keep the datasets under this directory")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-build-"))
    rows = []
    try:
        for w in args.workers:
            out = root / f"w{w}"
            shutil.rmtree(out, ignore_errors=True)
            wall = _build(args.recipe, out, w, args.cluster, args.overrides)
            samples, busy = _shard_seconds(out)
            rows.append({"workers": w, "samples": samples, "wall_s": round(wall, 2),
                         "samples_per_min": round(60.0 * samples / wall, 2),
                         "task_s_per_sample": round(busy / max(samples, 1), 3),
                         # rendering rate with start-up, banks and the last shard's tail removed
                         "steady_samples_per_min": round(60.0 * samples * w / max(busy, 1e-9), 2)})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    base = rows[0]["samples_per_min"]
    print(f"# {args.recipe} {' '.join('--set ' + o for o in args.overrides)}; cluster {args.cluster}; "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    steady = rows[0]["steady_samples_per_min"]
    print(f"{'workers':>7s} {'samples':>7s} {'wall s':>8s} {'samples/min':>12s} {'task s/sample':>14s} "
          f"{'speed-up':>8s} {'steady/min':>10s} {'steady speed-up':>15s}")
    for r in rows:
        print(f"{r['workers']:7d} {r['samples']:7d} {r['wall_s']:8.2f} {r['samples_per_min']:12.2f} "
              f"{r['task_s_per_sample']:14.3f} {r['samples_per_min'] / base:8.2f} "
              f"{r['steady_samples_per_min']:10.2f} {r['steady_samples_per_min'] / steady:15.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "recipe": args.recipe,
                                               "overrides": args.overrides, "cores": os.cpu_count(),
                                               "versions": software_versions()}, indent=1))


if __name__ == "__main__":
    main()
