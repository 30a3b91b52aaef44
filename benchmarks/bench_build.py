"""Build throughput (samples per minute) of ``simaq-factory build`` with 1 and 2 local workers.

Runs the real CLI in a subprocess for each worker count on a fresh output directory, times the
whole command (cluster start-up included) and reads the per-shard timings back from provenance::

    .venv/bin/python benchmarks/bench_build.py recipes/demo-cpu.yaml --workers 1 2 \\
        --set dataset.n_samples=16 --json build.json

Each worker gets ``cores // workers`` torch threads (the LocalCluster default), so the comparison
is "the same machine split differently", as a user would run it; add
``--set execution.threads_per_worker=1`` to compare single-threaded workers. ``--cluster inline``
renders in one process, so it takes ``--workers 1`` only.

Every figure is one build per row (no repeats). ``samples/min`` is over the whole command
(interpreter and cluster start-up, noise banks, the last shard's tail included). ``steady/min`` is
the rendering rate once every process runs: samples × processes / summed task time, over the shards
*after each worker process's first one* (a process's first shard carries its start-up: reading and
checking the stored banks, the first call's warm-up). Processes are told apart by the (host, pid) of
each shard's provenance record and a process's first shard is its earliest-written record. When
every process rendered only one shard the steady rate cannot be told and is left out ("-"). A
steady speed-up above the ratio of worker counts is flagged with "!" and a warning: either the
baseline's (first row's) torch threads did not scale (other load on the machine slows torch's
multi-threaded kernels far more than single-threaded workers; the steady rates can then be real,
not noise) or there were too few shards per worker for a rate. Each row records the torch threads its workers rendered with (``worker_torch_threads``,
the distinct values of the shards' provenance ``torch_threads``), and the run record the machine's
load average at the start and the end.

A build that fails (a bad recipe, a refused flag) stops the benchmark with the build's own error
line and exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Parser, begin_run, check_output_path, fail, positive_int, run_record, write_json


class _BuildFailed(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _build(recipe: str, out: Path, workers: int, cluster: str, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "simaq_factory.cli.main", "build", recipe, "-o", str(out),
           "--cluster", cluster, *(["--workers", str(workers)] if cluster != "inline" else [])]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    code = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode  # its stderr (errors) passes through
    if code != 0:
        raise _BuildFailed(code)
    return time.perf_counter() - t0


def _shard_timings(out: Path) -> dict[str, float | int | None]:
    """Samples and summed task seconds of all shards, and of the shards after each process's first;
    the workers' torch threads (sorted distinct values of the provenance records' ``torch_threads``)."""
    per_process: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    records = []
    for p in sorted((out / "provenance").glob("*.json")):
        rec = json.loads(p.read_text())
        records.append(rec)
        key = (str(rec.get("host")), int(rec.get("pid", 0)))
        per_process.setdefault(key, []).append(
            (p.stat().st_mtime_ns, rec["samples"][1] - rec["samples"][0], float(rec["timings_s"]["total"])))
    threads = sorted({int(rec["torch_threads"]) for rec in records if rec.get("torch_threads") is not None})
    samples = sum(s for recs in per_process.values() for _, s, _ in recs)
    busy = sum(t for recs in per_process.values() for _, _, t in recs)
    later = [r for recs in per_process.values() for r in sorted(recs)[1:]]
    steady_samples = sum(s for _, s, _ in later)
    steady_busy = sum(t for _, _, t in later)
    procs = len(per_process)
    return {"samples": samples, "busy_s": busy, "worker_torch_threads": threads,
            "processes": procs, "shards": sum(map(len, per_process.values())),
            "steady_shards": len(later), "steady_samples": steady_samples, "steady_busy_s": steady_busy,
            "steady_samples_per_min": (round(60.0 * steady_samples * procs / steady_busy, 2)
                                       if later and steady_busy > 0 else None)}


def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--cluster", default="local", choices=["local", "inline"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--keep", default=None, help="keep the datasets under this directory")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.cluster == "inline" and any(w != 1 for w in args.workers):
        fail("argument --workers: --cluster inline renders in one process; use --workers 1")
    check_output_path(args.json)
    if args.keep is not None:
        if not args.keep:
            fail("argument --keep: empty path")
        keep = Path(args.keep)
        if keep.exists() and not keep.is_dir():
            fail(f"argument --keep: {args.keep} is not a directory")
        try:
            keep.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            fail(f"argument --keep: {args.keep}: {err.strerror}")
    if not Path(args.recipe).is_file():
        fail(f"{args.recipe}: recipe file not found")

    begin_run()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-build-"))
    rows = []
    try:
        for w in args.workers:
            out = root / f"w{w}"
            shutil.rmtree(out, ignore_errors=True)
            wall = _build(args.recipe, out, w, args.cluster, args.overrides)
            t = _shard_timings(out)  # read before the dataset is deleted (no --keep)
            samples = int(t["samples"])
            rows.append({"workers": w, "cluster": args.cluster, "processes": t["processes"],
                         "worker_torch_threads": t["worker_torch_threads"],
                         "samples": samples, "shards": t["shards"], "wall_s": round(wall, 2),
                         "samples_per_min": round(60.0 * samples / wall, 2),
                         "task_s_per_sample": round(float(t["busy_s"]) / max(samples, 1), 3),
                         "steady_shards": t["steady_shards"],
                         "steady_task_s_per_sample": (round(float(t["steady_busy_s"]) / t["steady_samples"], 3)
                                                      if t["steady_samples"] else None),
                         "steady_samples_per_min": t["steady_samples_per_min"]})
    except _BuildFailed as err:
        sys.exit(err.code)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    base = rows[0]["samples_per_min"]
    steady = rows[0]["steady_samples_per_min"]
    print(f"# {args.recipe} {' '.join('--set ' + o for o in args.overrides)}; cluster {args.cluster}; "
          f"{os.cpu_count()} cores; one build per row; steady excludes each worker process's first shard; "
          "threads: the workers' torch threads, from the shards' provenance")
    print(f"{'workers':>7s} {'threads':>7s} {'samples':>7s} {'wall s':>8s} {'samples/min':>12s} "
          f"{'task s/sample':>14s} "
          f"{'speed-up':>8s} {'steady shards':>13s} {'steady/min':>10s} {'steady speed-up':>15s}")
    warnings = []
    for r in rows:
        rs = r["steady_samples_per_min"]
        if rs is not None and steady:
            r["steady_speed_up"] = round(rs / steady, 3)
            flag = "!" if r["steady_speed_up"] > r["workers"] / rows[0]["workers"] + 1e-9 else " "
            if flag == "!":
                warnings.append(f"warning: {r['workers']} workers: steady speed-up {r['steady_speed_up']:.2f} "
                                f"exceeds the worker ratio {r['workers'] / rows[0]['workers']:g} "
                                f"(the {rows[0]['workers']}-worker baseline's threads did not scale (machine "
                                "load?) or too few shards per worker)")
            su = f"{r['steady_speed_up']:14.2f}{flag}"
        else:
            r["steady_speed_up"] = None
            su = f"{'-':>15s}"
        threads = ",".join(map(str, r["worker_torch_threads"])) or "?"
        print(f"{r['workers']:7d} {threads:>7s} {r['samples']:7d} {r['wall_s']:8.2f} {r['samples_per_min']:12.2f} "
              f"{r['task_s_per_sample']:14.3f} {r['samples_per_min'] / base:8.2f} {r['steady_shards']:13d} "
              f"{(f'{rs:10.2f}' if rs is not None else '-'.rjust(10))} {su}")
    for line in warnings:
        print(line, file=sys.stderr)
    if args.json:
        write_json(args.json, {"rows": rows, "recipe": args.recipe, "overrides": args.overrides,
                               "cluster": args.cluster, "cores": os.cpu_count(), "warnings": warnings,
                               "statistic": "one build per row; steady excludes each process's first shard",
                               "run": run_record(args, None)})


if __name__ == "__main__":
    main()
