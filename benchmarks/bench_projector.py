"""Benchmark the pure-PyTorch projector and FBP against scikit-image (and ASTRA when installed).

Prints a table (stdout) of per-slice milliseconds for forward projection and FBP (default: 256², 180
angles, 64 slices, 2 threads) and the relative L2 difference to scikit-image ``radon``/``iradon`` on a
few slices.

    .venv/bin/python benchmarks/bench_projector.py [--n 256] [--angles 180] [--slices 64]
        [--threads 2] [--repeats 3] [--ref-slices 4] [--astra-slices 16] [--device cpu]
        [--backend torch [triton ...]] [--analytic] [--json out.json]

Statistic: every time is the **median of ``--repeats`` timed runs after one untimed warm-up run**,
for ours, scikit-image and ASTRA alike, divided by the number of slices each run covers: ours
projects all ``--slices`` slices in one call (its index tables are shared by the slices, so its
per-slice time falls as slices grow), scikit-image runs slice by slice over ``--ref-slices`` slices
and ASTRA over ``--astra-slices`` slices. The warm-up of ours runs at the timed shape (the whole
volume, then the whole projection stack), so that the timed calls find the kernels compiled for
that shape (Triton specialises ``Z`` on divisibility by 16) and the CUDA allocator's blocks
cached; scikit-image's and ASTRA's warm-up runs on one slice. ASTRA's FBP reconstructs *our*
projections (as our FBP and scikit-image's ``iradon`` of its own ``radon`` do); its difference is
to scikit-image's ``iradon``, over the first ``min(--ref-slices, --astra-slices, --slices)`` slices.

Threads: ours runs on ``--threads`` torch threads; scikit-image and ASTRA (the PyPI wheel's CPU
projectors have no OpenMP) run single-threaded, on one core. The header and the JSON
(``config.peers``) say so. ASTRA's CPU projectors ``linear``, ``strip`` and ``line`` are timed
forward; its FBP uses ``linear``. With ``--threads`` above 1, ASTRA ``linear`` is timed again at
equal cores (``astra.linear_equal_cores``): its slices split over ``--threads`` single-threaded
processes that start each run together, a run timed from the first start to the last end.

The differences to scikit-image say how close a method is to that oracle, not how accurate it is.
``--analytic`` adds a check against the truth: a smooth phantom (a sum of Gaussians, scaled to
``--n``) whose parallel projections are known in closed form; it reports each forward projector's
relative L2 to the analytic projections and each FBP's relative L2 to the phantom inside the disc of
radius n/2 - 2, FBP fed the analytic projections (one slice, ``--angles`` angles, untimed).

``--backend`` times each named projector backend (``torch``: the index tables; ``triton``: the
kernels of :mod:`simaq_factory.tomo.kernels`, CUDA) on the same data and reports their largest
relative difference; the first one is compared with scikit-image and ASTRA. On CUDA the figures
include the texture-rate floor, A·N²·Z bilinear interpolations at ``--texel-rate`` per second.

``--iterative`` instead times the iterative path on a 100° arc of ``--angles`` projections: building
a :class:`~simaq_factory.tomo.plan.ProjectorPlan`, one cached ``A`` and ``Aᵀ``, and the seconds per
SIRT and CGLS iteration (``--iterations`` each, default 10; median of the iterations after the
first, which carries the set-up). The uncached A/Aᵀ and the plan build are one run each (after the
untimed projection that makes the data); the cached A/Aᵀ are the median of ``--repeats`` after one
warm-up (the printed header and ``config.statistic`` say so); e.g. the issue's reference size::

    .venv/bin/python benchmarks/bench_projector.py --iterative --n 128 --slices 64 --angles 100
"""

from __future__ import annotations

import simaq_factory  # noqa: F401, I001 - first: it enables huge pages before torch loads

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from simaq_factory.tomo import (
    Geometry,
    ProjectorPlan,
    adjoint_project,
    cgls,
    fbp,
    forward_project,
    sirt,
    skimage_padded_size,
)
from simaq_factory.tomo.projector import BACKENDS, check_backend

from _common import (Parser, begin_run, check_output_path, fail, int_at_least, positive_float, positive_int,
                     resolve_device_arg, run_record, write_json)


def _phantom(n: int, z: int, rng: np.random.Generator) -> np.ndarray:
    """(Z, n, n) float32 blobs, zero outside radius n//2 - 2 around n//2 (valid for both oracles)."""
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    vol = np.zeros((z, n, n), dtype=np.float32)
    for k in range(z):
        for _ in range(6):
            cy, cx = rng.uniform(0.3 * n, 0.7 * n, 2)
            r = rng.uniform(0.05 * n, 0.2 * n)
            vol[k] += rng.uniform(0.2, 1.0) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    vol[:, (yy - n // 2) ** 2 + (xx - n // 2) ** 2 > (n // 2 - 2) ** 2] = 0.0
    return vol


def _median(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, Any]:
    """Median seconds of ``repeats`` timed calls of ``fn`` (the caller warms up), and its last output."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _sk_median(fn: Callable[[int], Any], k: int, repeats: int) -> tuple[float, list[Any]]:
    """Median over ``repeats`` of the seconds per slice of ``fn`` run on slices 0..k-1, after one
    untimed call on slice 0; and the outputs of the last repeat."""
    fn(0)
    times, outs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [fn(i) for i in range(k)]
        times.append((time.perf_counter() - t0) / k)
    return statistics.median(times), outs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    dev = args.dev
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n, z = args.n, args.slices
    theta = np.arange(args.angles) * 180.0 / args.angles
    vol_np = _phantom(n, z, np.random.default_rng(0))
    vol = torch.tensor(vol_np, device=dev)
    geom = Geometry.from_degrees(n, theta, center="skimage")
    res: dict[str, Any] = {
        "config": {"n": n, "angles": args.angles, "slices": z, "threads": args.threads, "device": str(dev),
                   "repeats": args.repeats,
                   "statistic": "median of --repeats after one warm-up (ours: at the timed shape)",
                   "peers": PEERS},
    }
    outputs = {}
    for backend in args.backend:
        t_fwd, t_fbp, outputs[backend] = _time_backend(vol, geom, backend, args.repeats, sync)
        res[f"simaq_{backend}"] = {"forward_ms_per_slice": 1e3 * t_fwd / z, "fbp_ms_per_slice": 1e3 * t_fbp / z,
                                   "forward_s": t_fwd, "fbp_s": t_fbp}
    first = args.backend[0]
    proj = outputs[first][0]
    res["primary"] = f"simaq_{first}"
    for other in args.backend[1:]:
        res[f"max_rel_diff_{other}_vs_{first}"] = {
            key: float((outputs[other][i] - outputs[first][i]).abs().max() / outputs[first][i].abs().max())
            for i, key in enumerate(("forward", "fbp"))}
    if args.triton_tiles:
        res["triton_tiles"] = _tile_sweep(vol, geom, args.triton_tiles, args.repeats, sync)
    if dev.type == "cuda":
        floor = args.angles * n * n * z / args.texel_rate
        res["texture_floor_s"] = floor
        for backend in args.backend:
            r = res[f"simaq_{backend}"]
            r["forward_over_floor"], r["fbp_over_floor"] = r["forward_s"] / floor, r["fbp_s"] / floor

    from skimage.transform import iradon, radon

    k = min(args.ref_slices, z)
    t_sk_fwd, sk_sino = _sk_median(lambda i: radon(vol_np[i].astype(np.float64), theta, circle=True),
                                   k, args.repeats)
    t_sk_fbp, sk_rec = _sk_median(
        lambda i: iradon(sk_sino[i], theta, filter_name="ramp", interpolation="linear", circle=True),
        k, args.repeats)
    ours_fwd = proj[:, :k].cpu().numpy().transpose(1, 2, 0)  # (k, D, A) like skimage
    ours_rec = fbp(proj[:, :k], geom, filter="ram-lak", pad_to=skimage_padded_size(n)).cpu().numpy()
    res["skimage"] = {"forward_ms_per_slice": 1e3 * t_sk_fwd, "fbp_ms_per_slice": 1e3 * t_sk_fbp,
                      "slices_timed": k}
    res["accuracy_vs_skimage"] = {
        "forward_rel_l2": max(_rel(ours_fwd[i], sk_sino[i]) for i in range(k)),
        "fbp_rel_l2": max(_rel(ours_rec[i], sk_rec[i]) for i in range(k)),
    }
    from simaq_factory.tomo.adapters import astra_available

    if not astra_available():
        res["astra"] = "not installed"
    else:  # pragma: no cover - optional
        m = min(z, args.astra_slices)
        res["astra"] = _astra(vol_np[:m], proj[:, :m].cpu().numpy(), geom, sk_sino, sk_rec, args.repeats)
        if args.threads > 1 and m >= args.threads:
            res["astra"]["linear_equal_cores"] = _astra_equal_cores(
                vol_np[:m], proj[:, :m].cpu().numpy(), geom, args.repeats, args.threads)
        for key in ("forward", "fbp"):
            res["astra"][f"{key}_time_ratio_astra_over_ours"] = (
                res["astra"]["linear"][f"{key}_ms_per_slice"] / res[res["primary"]][f"{key}_ms_per_slice"])
            if "linear_equal_cores" in res["astra"]:
                res["astra"][f"{key}_time_ratio_astra_equal_cores_over_ours"] = (
                    res["astra"]["linear_equal_cores"][f"{key}_ms_per_slice"]
                    / res[res["primary"]][f"{key}_ms_per_slice"])
    if args.analytic:
        res["accuracy_vs_analytic"] = _analytic(n, theta, geom, astra_available())
    return res


PEERS = ("scikit-image and ASTRA single-threaded (one core; ASTRA linear also over --threads processes when"
         " above 1); ours on --threads torch threads")

# the --analytic phantom at n = 256: (dy, dx, sigma, amplitude) of each Gaussian, scaled by n / 256
_BLOBS = ((0, 0, 16.0, 1.0), (30, -20, 10.0, 0.7), (-40, 24, 12.0, 0.5), (10, 50, 3.0, 0.8))


def _analytic(n: int, theta: np.ndarray, geom: Geometry, with_astra: bool) -> dict[str, Any]:
    """Relative L2 of each forward projector to the closed-form projections of a sum of Gaussians,
    and of each FBP (fed those projections, Ram-Lak) to the phantom inside the disc of radius n/2 - 2."""
    from skimage.transform import iradon, radon

    c, f = n // 2, n / 256.0
    blobs = [(dy * f, dx * f, s * f, a) for dy, dx, s, a in _BLOBS]
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    img = sum(a * np.exp(-((yy - c - dy) ** 2 + (xx - c - dx) ** 2) / (2 * s * s)) for dy, dx, s, a in blobs)
    t = (np.arange(n) - c)[:, None]
    th = np.deg2rad(theta)[None, :]
    truth = np.zeros((n, len(theta)))  # (D, A) like scikit-image; detector coordinate of (x, y): x cos - y sin
    for dy, dx, s, a in blobs:
        p = dx * np.cos(th) - dy * np.sin(th)
        truth += a * np.sqrt(2 * np.pi) * s * np.exp(-((t - p) ** 2) / (2 * s * s))
    vol = img[None].astype(np.float32)
    with warnings.catch_warnings():  # the Gaussians' tails reach the circle's edge (~1e-14 there)
        warnings.simplefilter("ignore", UserWarning)
        sk_fwd = radon(img, theta, circle=True)
    fwd = {"skimage": sk_fwd,
           "simaq_torch": forward_project(torch.tensor(vol), geom).numpy()[:, 0].T}
    disc = (yy - c) ** 2 + (xx - c) ** 2 <= (n // 2 - 2) ** 2
    p32 = np.ascontiguousarray(truth.T[:, None, :], dtype=np.float32)  # (A, 1, D)
    rec = {"skimage": iradon(truth, theta, filter_name="ramp", interpolation="linear", circle=True),
           "simaq_torch": fbp(torch.tensor(p32), geom, filter="ram-lak").numpy()[0]}
    if with_astra:  # pragma: no cover - optional
        from simaq_factory.tomo.adapters import astra_fbp, astra_forward

        for projector in ASTRA_PROJECTORS:
            fwd[f"astra_{projector}"] = astra_forward(vol, geom, projector=projector)[:, 0].T
        rec["astra_linear"] = astra_fbp(p32, geom, "ram-lak")[0]
    return {"phantom": "sum of 4 Gaussians, sigma 3-16 px at n=256 (scaled by n/256); one slice",
            "forward_rel_l2_to_analytic": {k: _rel(v, truth) for k, v in fwd.items()},
            "fbp_rel_l2_to_phantom_in_disc": {k: _rel(v[disc], img[disc]) for k, v in rec.items()}}


def _time_backend(vol: torch.Tensor, geom: Geometry, backend: str, repeats: int, sync: Callable[[], None]
                  ) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor]]:
    """Median seconds (of ``repeats``) of the forward projection and of FBP with ``backend``, and their
    (projections, reconstruction). Each is warmed up by one untimed call at the timed shape (all of
    ``vol``, all of its projections): Triton compiles a kernel per divisibility class of ``Z`` (by
    16), so a warm-up on fewer slices would leave the compile in the first timed call, and the CUDA
    caching allocator would lack the full-size blocks."""
    forward_project(vol, geom, backend=backend)
    sync()
    t_fwd, proj = _median(lambda: forward_project(vol, geom, backend=backend), repeats, sync)
    fbp(proj, geom, filter="ram-lak", backend=backend)
    sync()
    t_fbp, rec = _median(lambda: fbp(proj, geom, filter="ram-lak", backend=backend), repeats, sync)
    return t_fwd, t_fbp, (proj, rec)


def _tile_sweep(vol: torch.Tensor, geom: Geometry, tiles: list[str], repeats: int,
                sync: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Seconds of the Triton forward projection and FBP per tile ``AxZxW`` (both kernels)."""
    from simaq_factory.tomo import kernels

    default = dict(kernels.TILES)
    out = {}
    try:
        for tile in tiles:
            a, zt, w = _tile(tile)
            kernels.TILES.update(forward=(a, zt, w), backprojection=(a, zt, w))
            t_fwd, t_fbp, _ = _time_backend(vol, geom, "triton", repeats, sync)
            out[tile] = {"forward_s": t_fwd, "fbp_s": t_fbp}
            print(f"triton tile {tile:<9s}: forward {1e3 * t_fwd:8.2f} ms   fbp {1e3 * t_fbp:8.2f} ms")
    finally:
        kernels.TILES.update(default)
    return out


ITERATIVE_STATISTIC = ("uncached A/At and the plan build: one run each (after the untimed projection that "
                       "makes the data); cached A/At: median of --repeats after one warm-up; SIRT/CGLS: median "
                       "iteration after the first (the first, with the set-up, reported apart)")


def run_iterative(args: argparse.Namespace) -> dict[str, Any]:
    """Time plan building, cached A / Aᵀ, and SIRT / CGLS per iteration on a 100° arc."""
    torch.set_num_threads(args.threads)
    dev = args.dev
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n, z = args.n, args.slices
    geom = Geometry.from_degrees(n, np.linspace(-50.0, 50.0, args.angles, endpoint=False))
    vol = torch.tensor(_phantom(n, z, np.random.default_rng(0)), device=dev)
    proj = forward_project(vol, geom)
    sync()
    t_fwd, _ = _median(lambda: forward_project(vol, geom), 1, sync)
    t_adj, _ = _median(lambda: adjoint_project(proj, geom, clip_circle=True), 1, sync)

    def build() -> ProjectorPlan:
        plan = ProjectorPlan(geom, dtype=vol.dtype, device=dev, clip_circle=True)
        plan.adjoint_rows(torch.zeros(plan.n_rays, 1, dtype=vol.dtype, device=dev))  # builds every chunk
        return plan

    t_build, plan = _median(build, 1, sync)
    x, y = plan.volume_to_rows(vol), plan.proj_to_rows(proj)
    plan.forward_rows(x)  # warm-up
    plan.adjoint_rows(y)
    sync()
    t_a, _ = _median(lambda: plan.forward_rows(x), args.repeats, sync)
    t_at, _ = _median(lambda: plan.adjoint_rows(y), args.repeats, sync)
    it = args.iterations

    def per_iteration(method: Callable[..., torch.Tensor], **kw: Any) -> tuple[float, float]:
        """(seconds before the first iteration, median seconds per iteration) from callback stamps."""
        stamps: list[float] = []
        t0 = time.perf_counter()
        method(proj, geom, iterations=it, callback=lambda k, x: (sync(), stamps.append(time.perf_counter())), **kw)
        steps = np.diff([t0, *stamps])
        return float(steps[0]), float(np.median(steps[1:])) if it > 1 else float(steps[0])

    t_sirt0, t_sirt = per_iteration(sirt, nonneg=True)
    t_cgls0, t_cgls = per_iteration(cgls)
    return {
        "config": {"n": n, "angles": args.angles, "slices": z, "threads": args.threads, "device": str(dev),
                   "iterations": it, "repeats": args.repeats, "statistic": ITERATIVE_STATISTIC},
        "seconds": {
            "forward_project_uncached": t_fwd,
            "adjoint_project_uncached": t_adj,
            "plan_build": t_build,
            "plan_cached_mb": plan.cached_bytes / 2**20,
            "A_cached": t_a,
            "At_cached": t_at,
            "sirt_setup_and_first_iteration": t_sirt0,
            "sirt_per_iteration": t_sirt,
            "cgls_setup_and_first_iteration": t_cgls0,
            "cgls_per_iteration": t_cgls,
        },
    }


def _astra(vol: np.ndarray, our_proj: np.ndarray, geom: Geometry, sk_sino: list[np.ndarray],
           sk_rec: list[np.ndarray], repeats: int) -> dict[str, Any]:  # pragma: no cover - optional
    """ASTRA's CPU projectors (single-threaded) through :mod:`simaq_factory.tomo.adapters` (same
    geometry), timed per slice (median of ``repeats`` after a one-slice warm-up), with their
    difference to the same scikit-image oracle as ours over the first ``min(len(sk_sino), len(vol))``
    slices (``slices_compared``). FBP gets our projections ``our_proj`` (A, Z, D), as our FBP does."""
    from simaq_factory.tomo.adapters import astra_fbp, astra_forward

    z = len(vol)
    k = min(len(sk_sino), z)  # --astra-slices may be fewer than --ref-slices
    out: dict[str, Any] = {"slices_timed": z, "slices_compared": k, "threads": 1}
    for projector in ASTRA_PROJECTORS:
        astra_forward(vol[:1], geom, projector=projector)  # warm-up
        t_fwd, astra_proj = _median(lambda: astra_forward(vol, geom, projector=projector), repeats, lambda: None)
        fwd = astra_proj[:, :k].transpose(1, 2, 0)  # (k, D, A) like skimage
        out[projector] = {"forward_ms_per_slice": 1e3 * t_fwd / z,
                          "forward_rel_l2_vs_skimage": max(_rel(fwd[i], sk_sino[i]) for i in range(k))}
    astra_fbp(our_proj[:, :1], geom, "ram-lak")  # warm-up
    t_fbp, rec = _median(lambda: astra_fbp(our_proj, geom, "ram-lak"), repeats, lambda: None)
    out["linear"]["fbp_ms_per_slice"] = 1e3 * t_fbp / z
    out["linear"]["fbp_rel_l2_vs_skimage"] = max(_rel(rec[i], sk_rec[i]) for i in range(k))
    return out


ASTRA_PROJECTORS = ("linear", "strip", "line")  # ASTRA's 2D parallel-beam CPU projectors


def _astra_part(vol: np.ndarray, proj: np.ndarray, geom: Geometry, repeats: int, barrier: Any,
                queue: Any) -> None:  # pragma: no cover - optional; runs in a child process
    """One process of ``_astra_equal_cores``: a one-slice warm-up, then ``repeats`` times forward
    (``linear``) and FBP of its slices, each run started together with the other processes (the
    barrier); puts the (start, end) ``time.perf_counter`` pairs (CLOCK_MONOTONIC: one clock for
    every process of the machine) of each run on ``queue``."""
    from simaq_factory.tomo.adapters import astra_fbp, astra_forward

    astra_forward(vol[:1], geom, projector="linear")
    astra_fbp(proj[:, :1], geom, "ram-lak")
    spans: dict[str, list[tuple[float, float]]] = {"forward": [], "fbp": []}
    for _ in range(repeats):
        for key, run_once in (("forward", lambda: astra_forward(vol, geom, projector="linear")),
                              ("fbp", lambda: astra_fbp(proj, geom, "ram-lak"))):
            barrier.wait()
            start = time.perf_counter()
            run_once()
            spans[key].append((start, time.perf_counter()))
    queue.put(spans)


def _astra_equal_cores(vol: np.ndarray, our_proj: np.ndarray, geom: Geometry, repeats: int,
                       processes: int) -> dict[str, Any]:  # pragma: no cover - optional
    """ASTRA ``linear`` on as many cores as ours: its slices split over ``processes`` single-threaded
    processes (every ``processes``-th slice each) that start each run together; a run's time is
    from the first process's start to the last one's end, the median of ``repeats`` of those, per
    slice of the whole volume. What a user who splits ASTRA's work over the cores would see."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_astra_part, args=(vol[i::processes], our_proj[:, i::processes], geom, repeats,
                                                     barrier, queue)) for i in range(processes)]
    for w in workers:
        w.start()
    spans = [queue.get(timeout=3600) for _ in workers]
    for w in workers:
        w.join()
    if any(w.exitcode != 0 for w in workers):
        raise RuntimeError("an ASTRA process of the equal-cores timing failed")
    out: dict[str, Any] = {"processes": processes, "threads_per_process": 1, "slices_timed": len(vol)}
    for key in ("forward", "fbp"):
        walls = [max(s[key][r][1] for s in spans) - min(s[key][r][0] for s in spans) for r in range(repeats)]
        out[f"{key}_ms_per_slice"] = 1e3 * statistics.median(walls) / len(vol)
    return out


def _tile(text: str) -> tuple[int, int, int]:
    """``AxZxW`` -> three positive ints (argparse type of ``--triton-tiles``)."""
    try:
        a, zt, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AxZxW (three integers), got {text!r}") from None
    if min(a, zt, w) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers in AxZxW, got {text!r}")
    return a, zt, w


def _print_table(res: dict[str, Any], backends: list[str]) -> None:
    cfg = res["config"]
    print(f"# {cfg['n']}^2, {cfg['angles']} angles, {cfg['slices']} slices, {cfg['threads']} torch threads, "
          f"device {cfg['device']}; ms per slice, median of {cfg['repeats']} after a warm-up "
          f"(scikit-image over {res['skimage']['slices_timed']} slices"
          + (f", ASTRA over {res['astra']['slices_timed']}" if isinstance(res["astra"], dict) else "") + ")")
    print(f"# {cfg['peers']}; relL2: worst slice's difference to scikit-image (not accuracy: see --analytic)"
          + (f", ASTRA's over {res['astra']['slices_compared']} slices" if isinstance(res["astra"], dict) else ""))
    primary = res[res["primary"]]
    ref = primary["forward_ms_per_slice"] + primary["fbp_ms_per_slice"]
    acc = res["accuracy_vs_skimage"]
    print(f"{'projector':<22s} {'forward':>9s} {'fbp':>9s} {'fwd+fbp':>9s} {'x ours':>7s} "
          f"{'relL2 fwd':>10s} {'relL2 fbp':>10s}")

    def row(name: str, fwd: float | None, fb: float | None, rf: str, rb: str) -> None:
        tot = fwd + fb if fwd is not None and fb is not None else None
        cell = lambda v: f"{v:9.2f}" if v is not None else "-".rjust(9)  # noqa: E731
        ratio = f"{tot / ref:7.2f}" if tot is not None else "-".rjust(7)
        print(f"{name:<22s} {cell(fwd)} {cell(fb)} {cell(tot)} {ratio} {rf:>10s} {rb:>10s}")

    for i, backend in enumerate(backends):
        ours = res[f"simaq_{backend}"]
        rf, rb = (f"{acc['forward_rel_l2']:.1e}", f"{acc['fbp_rel_l2']:.1e}") if i == 0 else ("-", "-")
        row(f"simaq {backend}", ours["forward_ms_per_slice"], ours["fbp_ms_per_slice"], rf, rb)
    if isinstance(res["astra"], dict):
        lin = res["astra"]["linear"]
        row("astra cpu linear", lin["forward_ms_per_slice"], lin["fbp_ms_per_slice"],
            f"{lin['forward_rel_l2_vs_skimage']:.1e}", f"{lin['fbp_rel_l2_vs_skimage']:.1e}")
        for projector in ASTRA_PROJECTORS[1:]:
            r = res["astra"][projector]
            row(f"astra cpu {projector}", r["forward_ms_per_slice"], None, f"{r['forward_rel_l2_vs_skimage']:.1e}", "-")
        if "linear_equal_cores" in res["astra"]:
            eq = res["astra"]["linear_equal_cores"]
            row(f"astra linear, {eq['processes']} proc", eq["forward_ms_per_slice"], eq["fbp_ms_per_slice"], "-", "-")
    sk = res["skimage"]
    row("scikit-image", sk["forward_ms_per_slice"], sk["fbp_ms_per_slice"], "(oracle)", "(oracle)")
    if not isinstance(res["astra"], dict):
        print(f"# astra: {res['astra']}")
    for other in backends[1:]:
        diff = res[f"max_rel_diff_{other}_vs_{backends[0]}"]
        print(f"# {other} vs {backends[0]}: max relative difference forward {diff['forward']:.1e}, "
              f"fbp {diff['fbp']:.1e}")
    if "accuracy_vs_analytic" in res:
        ana = res["accuracy_vs_analytic"]
        print(f"# --analytic ({ana['phantom']}): forward relL2 to the analytic projections: "
              + ", ".join(f"{k} {v:.2e}" for k, v in ana["forward_rel_l2_to_analytic"].items()))
        print("# FBP of the analytic projections, relL2 to the phantom in the disc: "
              + ", ".join(f"{k} {v:.2e}" for k, v in ana["fbp_rel_l2_to_phantom_in_disc"].items()))
    if "texture_floor_s" in res:
        for backend in backends:
            ours = res[f"simaq_{backend}"]
            print(f"# {backend}: {ours['forward_over_floor']:.1f}x (forward), {ours['fbp_over_floor']:.1f}x (fbp) "
                  f"the texture floor {1e3 * res['texture_floor_s']:.1f} ms")


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int_at_least(2), default=256, help="slice size n (n x n), >= 2")
    ap.add_argument("--angles", type=positive_int, default=180)
    ap.add_argument("--slices", type=positive_int, default=64)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--repeats", type=positive_int, default=3,
                    help="timed runs after one warm-up; the median is reported (ours, scikit-image, ASTRA)")
    ap.add_argument("--ref-slices", type=positive_int, default=4, help="slices run through scikit-image")
    ap.add_argument("--astra-slices", type=positive_int, default=16,
                    help="slices timed through ASTRA (when installed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", nargs="+", default=["torch"], choices=BACKENDS,
                    help="projector backends to time (the first is compared with the peers)")
    ap.add_argument("--triton-tiles", nargs="+", default=[], metavar="AxZxW", type=str,
                    help="with --backend triton on CUDA, also time these tiles (columns or pixels x slices x "
                         "warps, both kernels), e.g. 32x64x4 64x32x4 16x128x4")
    ap.add_argument("--texel-rate", type=positive_float, default=1.0e12,
                    help="bilinear interpolations per second of the GPU's texture units (the floor)")
    ap.add_argument("--json", default=None, help="write the results as JSON to this path")
    ap.add_argument("--analytic", action="store_true",
                    help="also measure accuracy against closed-form projections of a smooth phantom (one slice)")
    ap.add_argument("--iterative", action="store_true", help="time the plan, SIRT and CGLS instead")
    ap.add_argument("--iterations", type=positive_int, default=10, help="iterations timed with --iterative")
    args = ap.parse_args()
    for tile in args.triton_tiles:
        try:
            _tile(tile)
        except argparse.ArgumentTypeError as err:
            ap.error(f"argument --triton-tiles: {err}")
    check_output_path(args.json)
    args.dev = resolve_device_arg(args.device)
    for backend in args.backend:
        try:
            check_backend(backend, args.dev)
        except ValueError as err:
            fail(f"argument --backend: {err}")
    if args.triton_tiles and "triton" not in args.backend:
        fail("argument --triton-tiles: needs --backend triton")
    if args.analytic and args.iterative:
        fail("argument --analytic: not with --iterative (it checks the FBP comparison's projectors)")
    params = {k: v for k, v in vars(args).items() if k != "dev"}
    begin_run()
    if args.iterative:
        res = run_iterative(args)
        cfg = {k: v for k, v in res["config"].items() if k != "statistic"}
        print(f"# iterative, {cfg}")
        print(f"# statistic: {ITERATIVE_STATISTIC}")
        print(f"{'what':<32s} {'value':>9s}")
        for key, value in res["seconds"].items():
            print(f"{key:<32s} {value:9.3f} {'MiB' if key.endswith('_mb') else 's'}")
    else:
        res = run(args)
        _print_table(res, args.backend)
    if args.json:
        res["run"] = run_record(argparse.Namespace(**params), args.dev)
        write_json(args.json, res)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
