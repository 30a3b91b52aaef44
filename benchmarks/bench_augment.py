"""Augmentation cost per training window (simaq_train.data.augment), each op alone and all on.

    .venv/bin/python benchmarks/bench_augment.py --sizes 64 256 512

A window is 7 depth slices of N(0, 1) inside the field-of-view disc (margin 5) with block labels.
Prints windows per second per op (one process, torch's threads as set) and writes JSON with ``--json``.
Statistic: the mean time per window over as many windows as fit in ``--seconds`` (after one warm-up
window), each window with its own generator. "every op" forces every op on (flip, rot90, elastic,
resized crop, brightness/contrast/noise, blur, invert).
"""

from __future__ import annotations

import simaq_factory  # noqa: F401, I001 - first: it enables huge pages before torch loads

import dataclasses
import time

import numpy as np
import torch

from simaq_train.config import AugmentConfig
from simaq_train.data.augment import augment
from simaq_train.data.normalize import fov_mask

from _common import Parser, begin_run, check_output_path, int_at_least, positive_float, run_record, write_json

OFF = dict(flip=0.0, rot90=0.0, elastic_prob=0.0, resized_crop_prob=0.0, intensity=0.0, blur_prob=0.0,
           invert_prob=0.0)
CASES = {
    "defaults": {},
    "elastic": {**OFF, "elastic_prob": 1.0},
    "resized crop": {**OFF, "resized_crop_prob": 1.0},
    "blur": {**OFF, "blur_prob": 1.0},
    "brightness+contrast+noise": {**OFF, "intensity": 1.0},
    "every op": {"flip": 1.0, "rot90": 1.0, "elastic_prob": 1.0, "resized_crop_prob": 1.0, "intensity": 1.0,
                 "blur_prob": 1.0, "invert_prob": 1.0},
}


def _window(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    fov = fov_mask((n, n), 5.0)
    img = np.where(fov, rng.standard_normal((7, n, n), dtype=np.float32), np.float32(0.0))
    lab = np.kron(rng.integers(0, 4, (n // 8 + 1, n // 8 + 1)), np.ones((8, 8)))[:n, :n].astype(np.uint8)
    lab[~fov] = 255
    return img, lab, fov


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int_at_least(16), nargs="+", default=[64, 256, 512])
    ap.add_argument("--seconds", type=positive_float, default=2.0, help="time per case and size (> 0)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    check_output_path(args.json)
    begin_run()
    print(f"# windows/s and ms per window: mean over --seconds {args.seconds:g} per case after a warm-up; "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    for n in args.sizes:
        img, lab, fov = _window(n)
        for name, kw in CASES.items():
            cfg = dataclasses.replace(AugmentConfig(), **kw)
            augment(img, lab, np.random.default_rng(0), cfg, fov)  # warm-up
            reps, t0 = 0, time.perf_counter()
            while reps == 0 or time.perf_counter() - t0 < args.seconds:
                augment(img, lab, np.random.default_rng(reps), cfg, fov)
                reps += 1
            dt = (time.perf_counter() - t0) / reps
            rows.append({"size": n, "case": name, "windows_per_s": 1.0 / dt, "ms": dt * 1e3})
            print(f"7x{n}x{n}  {name:26s} {1.0 / dt:9.1f} windows/s  {dt * 1e3:8.2f} ms")
    if args.json:
        write_json(args.json, {"rows": rows, "cases": CASES,
                               "statistic": "mean per window over --seconds after one warm-up window",
                               "run": run_record(args, None)})


if __name__ == "__main__":
    main()
