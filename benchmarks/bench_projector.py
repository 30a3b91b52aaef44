"""Benchmark the pure-PyTorch projector and FBP against scikit-image (and ASTRA when installed).

Prints per-slice milliseconds for forward projection and FBP (default: 256², 180 angles, 64 slices,
2 threads) and the relative L2 difference to scikit-image ``radon``/``iradon`` on a few slices.

    .venv/bin/python benchmarks/bench_projector.py [--n 256] [--angles 180] [--slices 64]
        [--threads 2] [--ref-slices 4] [--device cpu] [--backend torch [triton ...]] [--json out.json]

``--backend`` times each named projector backend (``torch``: the index tables; ``triton``: the
kernels of :mod:`simaq_factory.tomo.kernels`, CUDA) on the same data and reports their largest
relative difference; the first one is compared with scikit-image and ASTRA. On CUDA the figures
include the texture-rate floor, A·N²·Z bilinear interpolations at ``--texel-rate`` per second.

``--iterative`` instead times the iterative path on a 100° arc of ``--angles`` projections: building
a :class:`~simaq_factory.tomo.plan.ProjectorPlan`, one cached ``A`` and ``Aᵀ``, and the seconds per
SIRT and CGLS iteration (``--iterations`` each, default 10); e.g. the issue's reference size::

    .venv/bin/python benchmarks/bench_projector.py --iterative --n 128 --slices 64 --angles 100
"""

from __future__ import annotations

import simaq_factory  # noqa: F401, I001 - first: it enables huge pages before torch loads

import argparse
import json
import logging
import platform
import time
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
from simaq_factory.tomo.projector import BACKENDS

logger = logging.getLogger("bench_projector")


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


def _best(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n, z = args.n, args.slices
    theta = np.arange(args.angles) * 180.0 / args.angles
    vol_np = _phantom(n, z, np.random.default_rng(0))
    vol = torch.tensor(vol_np, device=dev)
    geom = Geometry.from_degrees(n, theta, center="skimage")
    res: dict[str, Any] = {
        "config": {"n": n, "angles": args.angles, "slices": z, "threads": args.threads, "device": str(dev)},
        "machine": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
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
    t0 = time.perf_counter()
    sk_sino = [radon(vol_np[i].astype(np.float64), theta, circle=True) for i in range(k)]
    t_sk_fwd = (time.perf_counter() - t0) / k
    t0 = time.perf_counter()
    sk_rec = [iradon(s, theta, filter_name="ramp", interpolation="linear", circle=True) for s in sk_sino]
    t_sk_fbp = (time.perf_counter() - t0) / k
    ours_fwd = proj[:, :k].cpu().numpy().transpose(1, 2, 0)  # (k, D, A) like skimage
    ours_rec = fbp(proj[:, :k], geom, filter="ram-lak", pad_to=skimage_padded_size(n)).cpu().numpy()
    res["skimage"] = {"forward_ms_per_slice": 1e3 * t_sk_fwd, "fbp_ms_per_slice": 1e3 * t_sk_fbp}
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
        for key in ("forward", "fbp"):
            res["astra"][f"{key}_time_ratio_astra_over_ours"] = (
                res["astra"]["linear"][f"{key}_ms_per_slice"] / res[res["primary"]][f"{key}_ms_per_slice"])
    return res


def _time_backend(vol: torch.Tensor, geom: Geometry, backend: str, repeats: int, sync: Callable[[], None]
                  ) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor]]:
    """Best seconds of the forward projection and of FBP with ``backend`` (after a warm-up that
    also compiles the Triton kernels), and their (projections, reconstruction)."""
    forward_project(vol[:2], geom, backend=backend)
    t_fwd, proj = _best(lambda: forward_project(vol, geom, backend=backend), repeats, sync)
    fbp(proj[:, :2], geom, filter="ram-lak", backend=backend)
    t_fbp, rec = _best(lambda: fbp(proj, geom, filter="ram-lak", backend=backend), repeats, sync)
    return t_fwd, t_fbp, (proj, rec)


def _tile_sweep(vol: torch.Tensor, geom: Geometry, tiles: list[str], repeats: int,
                sync: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Seconds of the Triton forward projection and FBP per tile ``AxZxW`` (both kernels)."""
    from simaq_factory.tomo import kernels

    default = dict(kernels.TILES)
    out = {}
    try:
        for tile in tiles:
            a, zt, w = (int(v) for v in tile.lower().split("x"))
            kernels.TILES.update(forward=(a, zt, w), backprojection=(a, zt, w))
            t_fwd, t_fbp, _ = _time_backend(vol, geom, "triton", repeats, sync)
            out[tile] = {"forward_s": t_fwd, "fbp_s": t_fbp}
            logger.info("triton tile %-9s: forward %8.2f ms   fbp %8.2f ms", tile, 1e3 * t_fwd, 1e3 * t_fbp)
    finally:
        kernels.TILES.update(default)
    return out


def run_iterative(args: argparse.Namespace) -> dict[str, Any]:
    """Time plan building, cached A / Aᵀ, and SIRT / CGLS per iteration on a 100° arc."""
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n, z = args.n, args.slices
    geom = Geometry.from_degrees(n, np.linspace(-50.0, 50.0, args.angles, endpoint=False))
    vol = torch.tensor(_phantom(n, z, np.random.default_rng(0)), device=dev)
    proj = forward_project(vol, geom)
    t_fwd, _ = _best(lambda: forward_project(vol, geom), 1, sync)
    t_adj, _ = _best(lambda: adjoint_project(proj, geom, clip_circle=True), 1, sync)

    def build() -> ProjectorPlan:
        plan = ProjectorPlan(geom, dtype=vol.dtype, device=dev, clip_circle=True)
        plan.adjoint_rows(torch.zeros(plan.n_rays, 1, dtype=vol.dtype, device=dev))  # builds every chunk
        return plan

    t_build, plan = _best(build, 1, sync)
    x, y = plan.volume_to_rows(vol), plan.proj_to_rows(proj)
    t_a, _ = _best(lambda: plan.forward_rows(x), args.repeats, sync)
    t_at, _ = _best(lambda: plan.adjoint_rows(y), args.repeats, sync)
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
                   "iterations": it},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
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


def _astra(vol: np.ndarray, proj: np.ndarray, geom: Geometry, sk_sino: list[np.ndarray],
           sk_rec: list[np.ndarray], repeats: int) -> dict[str, Any]:  # pragma: no cover - optional
    """ASTRA's CPU projectors through :mod:`simaq_factory.tomo.adapters` (same geometry), timed per
    slice, with their accuracy against the same scikit-image oracle as ours. FBP gets our
    projections ``proj`` (A, Z, D), as our FBP does."""
    from simaq_factory.tomo.adapters import astra_fbp, astra_forward

    k = len(sk_sino)
    out: dict[str, Any] = {"slices_timed": len(vol)}
    for projector in ("linear", "strip"):
        t_fwd, proj = _best(lambda: astra_forward(vol, geom, projector=projector), repeats, lambda: None)
        fwd = proj[:, :k].transpose(1, 2, 0)  # (k, D, A) like skimage
        out[projector] = {"forward_ms_per_slice": 1e3 * t_fwd / len(vol),
                          "forward_rel_l2_vs_skimage": max(_rel(fwd[i], sk_sino[i]) for i in range(k))}
    t_fbp, rec = _best(lambda: astra_fbp(proj, geom, "ram-lak"), repeats, lambda: None)
    out["linear"]["fbp_ms_per_slice"] = 1e3 * t_fbp / len(vol)
    out["linear"]["fbp_rel_l2_vs_skimage"] = max(_rel(rec[i], sk_rec[i]) for i in range(k))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ref-slices", type=int, default=4, help="slices run through scikit-image")
    ap.add_argument("--astra-slices", type=int, default=16, help="slices timed through ASTRA (when installed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", nargs="+", default=["torch"], choices=BACKENDS,
                    help="projector backends to time (the first is compared with the peers)")
    ap.add_argument("--triton-tiles", nargs="+", default=[], metavar="AxZxW",
                    help="with --backend triton on CUDA, also time these tiles (columns or pixels x slices x "
                         "warps, both kernels), e.g. 32x64x4 64x32x4 16x128x4")
    ap.add_argument("--texel-rate", type=float, default=1.0e12,
                    help="bilinear interpolations per second of the GPU's texture units (the floor)")
    ap.add_argument("--json", default=None, help="write the results as JSON to this path")
    ap.add_argument("--iterative", action="store_true", help="time the plan, SIRT and CGLS instead")
    ap.add_argument("--iterations", type=int, default=10, help="iterations timed with --iterative")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.iterative:
        res = run_iterative(args)
        logger.info("config: %s", res["config"])
        for key, value in res["seconds"].items():
            logger.info("%-32s %9.3f %s", key, value, "MiB" if key.endswith("_mb") else "s")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(res, fh, indent=2)
        return
    res = run(args)
    sk = res["skimage"]
    logger.info("config: %s (%s)", res["config"], res["machine"])
    for backend in args.backend:
        ours = res[f"simaq_{backend}"]
        floor = (f"   ({ours['forward_over_floor']:.1f}x, {ours['fbp_over_floor']:.1f}x the texture floor "
                 f"{1e3 * res['texture_floor_s']:.1f} ms)" if "texture_floor_s" in res else "")
        logger.info("simaq %-6s: forward %7.2f ms/slice   fbp %7.2f ms/slice%s", backend,
                    ours["forward_ms_per_slice"], ours["fbp_ms_per_slice"], floor)
    for other in args.backend[1:]:
        diff = res[f"max_rel_diff_{other}_vs_{args.backend[0]}"]
        logger.info("%s vs %s: max relative difference forward %.1e, fbp %.1e", other, args.backend[0],
                    diff["forward"], diff["fbp"])
    logger.info("scikit-image : forward %7.2f ms/slice   fbp %7.2f ms/slice", sk["forward_ms_per_slice"], sk["fbp_ms_per_slice"])
    if isinstance(res["astra"], dict):
        lin, strip = res["astra"]["linear"], res["astra"]["strip"]
        logger.info("astra linear : forward %7.2f ms/slice   fbp %7.2f ms/slice   (%.1fx, %.1fx ours)",
                    lin["forward_ms_per_slice"], lin["fbp_ms_per_slice"],
                    res["astra"]["forward_time_ratio_astra_over_ours"], res["astra"]["fbp_time_ratio_astra_over_ours"])
        logger.info("astra strip  : forward %7.2f ms/slice", strip["forward_ms_per_slice"])
        logger.info("astra rel. L2 vs scikit-image: forward linear %.2e, strip %.2e   fbp (ram-lak) %.2e",
                    lin["forward_rel_l2_vs_skimage"], strip["forward_rel_l2_vs_skimage"],
                    lin["fbp_rel_l2_vs_skimage"])
    else:
        logger.info("astra        : %s", res["astra"])
    acc = res["accuracy_vs_skimage"]
    logger.info("rel. L2 vs scikit-image: forward %.2e   fbp (ramp) %.2e", acc["forward_rel_l2"], acc["fbp_rel_l2"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2)
        logger.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
