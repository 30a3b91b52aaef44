"""Training-loader throughput (windows per second) against the model's step rate.

Iterates one epoch of the training stream of a ``simaq-train`` config (reading the frozen shards,
rank-normalising each volume once, cutting windows, augmenting, batching) with 0 or more
DataLoader workers, then times training steps of the config's model on batches of the same shape.
The loader keeps up when its windows/s exceed the model's::

    .venv/bin/python benchmarks/bench_loader.py configs/train-cpu.yaml --workers 0 1 --batches 200

Needs the config's datasets, built and frozen first (the commands are in the config's header; for
``configs/train-cpu.yaml``: ``simaq-factory build recipes/train-cpu.yaml -o data/train-cpu --cluster
inline && simaq-factory freeze data/train-cpu``). Prints a table and writes JSON with ``--json``.
Statistic: one pass per row; windows/s is over the whole pass (the first batch's start-up, shown
apart, included); the model rate is the mean of ``--steps`` timed steps after 3 warm-up steps.
"""

from __future__ import annotations

import simaq_factory  # noqa: F401, I001 - first: it enables huge pages before torch loads

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader

from simaq_factory.recipe.fields import RecipeError
from simaq_train.bench import bench_train_step
from simaq_train.engine.parts import resolve_device
from simaq_train.config import load_config
from simaq_train.data.build import build_stream, resolve_classes

from _common import Parser, begin_run, check_output_path, fail, nonneg_int, positive_int, run_record, write_json


STATISTIC = ("loader: one pass of --batches batches per row, windows/s = windows / the pass's wall time (the "
             "first batch's start-up included, also given apart); model: mean of --steps timed training steps "
             "after 3 warm-up steps")


def _loader_rate(cfg, workers: int, batches: int) -> dict[str, float]:
    stream, info = build_stream(cfg)
    stream.set_state(0, 0)
    loader = DataLoader(stream, batch_size=None, num_workers=workers,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    t0 = time.perf_counter()
    first = None
    n_windows = n_batches = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0  # start-up: worker spawn, first volumes read
        n_windows += int(batch["image"].shape[0])
        n_batches += 1
        if n_batches >= batches:
            break
    wall = time.perf_counter() - t0
    return {"workers": workers, "batches": n_batches, "windows": n_windows, "wall_s": round(wall, 3),
            "first_batch_s": round(first or 0.0, 3), "windows_per_s": round(n_windows / wall, 1),
            "volumes": info["volumes"], "epoch_windows": info["windows"], "shape_yx": info["shape_yx"]}


def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workers", type=nonneg_int, nargs="+", default=[0, 1])
    ap.add_argument("--batches", type=positive_int, default=200)
    ap.add_argument("--steps", type=positive_int, default=20, help="timed model steps")
    ap.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (0: the config's run.threads)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    check_output_path(args.json)
    try:
        cfg = resolve_classes(load_config(args.config, args.overrides))
        build_stream(cfg)  # the datasets are there and readable, before any timing
        resolve_device(cfg.run.device, "run.device")
    except RecipeError as err:
        fail(str(err))
    begin_run()
    threads = args.threads or cfg.run.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    rows = [_loader_rate(cfg, w, args.batches) for w in args.workers]
    size = cfg.data.crop or rows[0]["shape_yx"][0]  # training windows are crops when crop is set
    step = bench_train_step(features=cfg.model.init_features, depth=cfg.model.depth, size=int(size),
                            window=cfg.data.window, batch_size=cfg.optim.batch_size, steps=args.steps,
                            amp="off", device=cfg.run.device, warmup=3)
    model_rate = step["samples_per_s"]
    print(f"# {args.config}: batch {cfg.optim.batch_size} x {cfg.data.window} x {size}^2, torch threads "
          f"{threads}, {os.cpu_count()} cores; one pass per row, windows/s over the pass (first batch "
          f"included); model: mean of {args.steps} steps after 3 warm-up")
    print(f"{'loader workers':>14s} {'batches':>8s} {'windows/s':>10s} {'first batch s':>14s} {'vs model':>9s}")
    for r in rows:
        print(f"{r['workers']:14d} {r['batches']:8d} {r['windows_per_s']:10.1f} {r['first_batch_s']:14.3f} "
              f"{r['windows_per_s'] / model_rate:8.1f}x")
    print(f"model step: {step['seconds_per_step'] * 1e3:.1f} ms/step = {model_rate:.1f} windows/s "
          f"({step['model_parameters']:,} parameters, device {step['device']})")
    if args.json:
        write_json(args.json, {"loader": rows, "model": step, "config": args.config, "overrides": args.overrides,
                               "threads": threads, "statistic": STATISTIC, "run": run_record(args, None)})


if __name__ == "__main__":
    main()
