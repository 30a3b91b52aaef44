"""Phantom-space artifacts: one bank-box resampling against ``F.interpolate``, and the whole stage.

    .venv/bin/python benchmarks/bench_artifacts.py --sizes 256 512 --threads 1 2

For each volume size: the time of ``artifacts.assemble.resample`` of a 64³ bank box to the volume
and of ``F.interpolate(mode="trilinear")`` doing the same (with their largest difference), then
``apply_artifacts`` (blur, beads, ice cracks, texture) on one demo-recipe phantom with four
samples' artifact parameters. Printed as ``min / median`` over ``--repeat`` timed runs after one
warm-up run (``apply_artifacts``: over ``max(1, repeat // 2)`` runs of the four samples, per sample);
the printed header and the JSON's ``statistic`` say so. JSON with ``--json``.
"""

from __future__ import annotations

import simaq_factory  # noqa: F401, I001 - first: it enables huge pages before torch loads

import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simaq_factory.artifacts import apply_artifacts, memory_banks, sample_artifacts
from simaq_factory.artifacts.assemble import resample
from simaq_factory.phantom.sample import sample_phantom
from simaq_factory.phantom.voxelization import voxelize
from simaq_factory.recipe.io import load_recipe
from simaq_factory.versions import cpu_kernels

from _common import Parser, begin_run, check_output_path, int_at_least, positive_int, run_record, write_json

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo-cpu.yaml"


def _times(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int_at_least(16), nargs="+", default=[256])
    ap.add_argument("--threads", type=positive_int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeat", type=positive_int, default=5, help="timed runs after one warm-up")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    check_output_path(args.json)
    begin_run()
    statistic = (f"[min, median] over --repeat {args.repeat} runs after one warm-up run; apply_artifacts over "
                 f"{max(1, args.repeat // 2)} runs of four samples, per sample")
    print(f"# {statistic}")
    rows = []
    cpu = torch.device("cpu")
    for n in args.sizes:
        shape = (n, n, n)
        box = torch.rand((64, 64, 64), generator=torch.Generator().manual_seed(0))
        recipe = load_recipe(DEMO, [f"dataset.shape=[{n},{n},{n}]"])
        banks = memory_banks(recipe.artifacts, shape, recipe.seed, cpu)
        spec = sample_phantom(recipe.phantom, shape, np.random.default_rng(5))
        phantom, labels = voxelize(spec, shape, cpu)
        params = [sample_artifacts(recipe.artifacts, shape, labels, spec.scale, np.random.default_rng(k))
                  for k in range(4)]
        ours = resample(box, shape)
        ref = F.interpolate(box[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]
        diff = float((ours - ref).abs().max())
        del ours, ref
        for threads in args.threads:
            torch.set_num_threads(threads)
            r_min, r_med = _times(lambda: resample(box, shape), args.repeat)
            f_min, f_med = _times(
                lambda: F.interpolate(box[None, None], size=shape, mode="trilinear", align_corners=False),
                args.repeat)
            def stage() -> None:  # each noisy volume dropped at once, as a build hands it on
                for p in params:
                    apply_artifacts(phantom, labels, p, banks)

            a_min, a_med = _times(stage, max(1, args.repeat // 2))
            row = {"size": n, "threads": threads, "resample_s": [r_min, r_med], "interpolate_s": [f_min, f_med],
                   "max_abs_diff": diff, "apply_artifacts_s": [a_min / 4, a_med / 4]}
            rows.append(row)
            print(f"{n}^3 threads {threads}: resample {r_min * 1e3:7.1f} / {r_med * 1e3:7.1f} ms, "
                  f"F.interpolate {f_min * 1e3:7.1f} / {f_med * 1e3:7.1f} ms (max diff {diff:.1e}); "
                  f"apply_artifacts {a_min / 4:.3f} / {a_med / 4:.3f} s per sample (min / median)")
    if args.json:
        write_json(args.json, {"rows": rows, "cpu_kernels": cpu_kernels(),
                               "statistic": statistic,
                               "run": run_record(args, None)})


if __name__ == "__main__":
    main()
