"""Triton kernels of the projector pair: the same numbers as :mod:`simaq_factory.tomo.projector`
without its index tables (optional backend, ``execution.projector: triton``; CUDA).

The pure-PyTorch projector builds, for every chunk of angles or pixels, tables of interpolation
indices and weights (8 bytes per bilinear tap) and hands them to ``embedding_bag``, whose loop over a
row's taps reads each table row only after reading its index: on a GPU that traffic and latency,
not the interpolation, is what it spends its time on (~17x the texture-rate floor at 512³). These
kernels compute each ray's or pixel's coordinates in registers instead, from the same per-ray start points
(:func:`simaq_factory.tomo.projector.ray_starts`) and per-angle coefficients, and gather contiguous
Z-vectors from the same tables (pixels or detector columns × slices, Z innermost), so a tile of
``BLOCK_Z`` slices is one coalesced load per tap.

Forward: one program per (angle, block of detector columns, block of slices) walks its rays'
unit-step samples (up to the longest ray of the block), bilinearly interpolating with the
zero-bordered pixel table; samples past a ray's end are masked. Backprojection: one program per
(block of pixels, block of slices) loops over the angles, linearly interpolating the filtered
projections. Each output element is summed in a fixed order by one program, so results repeat to the
bit on one GPU; they differ from the table path only by float rounding (fused multiply-adds).

Triton is imported lazily (it ships with CUDA builds of torch). With ``TRITON_INTERPRET=1`` set before
the first import, the kernels run on CPU tensors through Triton's interpreter: how the tests check
them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Any

import torch

from simaq_factory.tomo.geometry import Geometry

__all__ = ["TILES", "available", "backproject_table", "compile_for", "forward_project", "interpreting", "self_check"]

#: Tile of one program, (columns or pixels, slices, warps), per kernel. Chosen for coalescing (64
#: float32 slices = 256 contiguous bytes per tap) and occupancy, not yet by measurement:
#: ``benchmarks/bench_projector.py --device cuda --backend triton --triton-tiles ...`` compares others.
TILES: dict[str, tuple[int, int, int]] = {"forward": (32, 64, 4), "backprojection": (32, 64, 4)}


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``), as Triton
    itself reads the variable."""
    value = os.environ.get("TRITON_INTERPRET", "")
    if not value:
        return False
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # an older Triton, or none
        return value.strip().lower() in ("1", "true", "on", "yes", "y")


def available() -> bool:
    """Whether Triton can be imported here."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _kernels() -> tuple[Any, Any, Any]:
    """Compile-on-first-use kernels (``triton``, forward, backprojection)."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(table, xs_ptr, ys_ptr, cnt_ptr, sin_ptr, cos_ptr, out,
                       D, Z, n_dblocks, n_f, W,
                       BLOCK_D: tl.constexpr, BLOCK_Z: tl.constexpr):
        pid = tl.program_id(0)
        a = pid // n_dblocks
        d = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
        zz = tl.program_id(1) * BLOCK_Z + tl.arange(0, BLOCK_Z)
        dm = d < D
        zm = zz < Z
        ray = a * D + d
        xs = tl.load(xs_ptr + ray, mask=dm, other=0.0)
        ys = tl.load(ys_ptr + ray, mask=dm, other=0.0)
        cnt = tl.load(cnt_ptr + ray, mask=dm, other=0)
        si = tl.load(sin_ptr + a)
        co = tl.load(cos_ptr + a)
        z64 = zz.to(tl.int64)[None, :]
        acc = tl.zeros((BLOCK_D, BLOCK_Z), dtype=tl.float32)
        kf = xs * 0.0  # the step k as float32, exact below 2**24
        for k in range(0, tl.max(cnt, axis=0)):
            x = tl.minimum(tl.maximum(xs + si * kf, -1.0), n_f)
            y = tl.minimum(tl.maximum(ys + co * kf, -1.0), n_f)
            # floor clamped to n - 1: a sample at exactly n takes the zero border with weight 1
            xf = tl.minimum(tl.floor(x), n_f - 1.0)
            yf = tl.minimum(tl.floor(y), n_f - 1.0)
            fx = x - xf
            fy = y - yf
            gy = 1.0 - fy
            gx = 1.0 - fx
            live = (k < cnt) & dm
            base = yf.to(tl.int64) * W + xf.to(tl.int64) + (W + 1)  # exact for any n
            m = live[:, None] & zm[None, :]
            p00 = table + (base[:, None] * Z + z64)
            v00 = tl.load(p00, mask=m, other=0.0)
            v01 = tl.load(p00 + Z, mask=m, other=0.0)
            v10 = tl.load(p00 + W * Z, mask=m, other=0.0)
            v11 = tl.load(p00 + (W + 1) * Z, mask=m, other=0.0)
            acc += (gy * gx)[:, None] * v00
            acc += (gy * fx)[:, None] * v01
            acc += (fy * gx)[:, None] * v10
            acc += (fy * fx)[:, None] * v11
            kf += 1.0
        # out is (A, Z, D): columns contiguous
        dst = out + (a.to(tl.int64) * Z * D + z64 * D + d.to(tl.int64)[:, None])
        tl.store(dst, acc, mask=dm[:, None] & zm[None, :])

    @triton.jit
    def backproject_kernel(table, pix_ptr, cx_ptr, cy_ptr, u0_ptr, wa_ptr, out,
                           P, Z, A, n, det, NN,
                           HAS_WEIGHTS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Z: tl.constexpr):
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        zz = tl.program_id(1) * BLOCK_Z + tl.arange(0, BLOCK_Z)
        pm = p < P
        zm = zz < Z
        pix = tl.load(pix_ptr + p, mask=pm, other=0)
        ys = (pix // n).to(tl.float32)
        xs = (pix % n).to(tl.float32)
        z64 = zz.to(tl.int64)[None, :]
        last = (det - 1) * 1.0
        acc = tl.zeros((BLOCK_P, BLOCK_Z), dtype=tl.float32)
        for a in range(0, A):
            u = tl.load(u0_ptr + a) + xs * tl.load(cx_ptr + a)
            u = u + ys * tl.load(cy_ptr + a)
            inside = (u >= 0.0) & (u <= last)
            i0 = tl.minimum(tl.maximum(tl.floor(u), 0.0), last - 1.0)
            valid = inside.to(tl.float32)
            w1 = (u - i0) * valid
            w0 = valid - w1
            if HAS_WEIGHTS:
                wa = tl.load(wa_ptr + a)
                w0 = w0 * wa
                w1 = w1 * wa
            row = i0.to(tl.int64) + a * det
            m = (inside & pm)[:, None] & zm[None, :]
            p0 = table + (row[:, None] * Z + z64)
            v0 = tl.load(p0, mask=m, other=0.0)
            v1 = tl.load(p0 + Z, mask=m, other=0.0)
            acc += w0[:, None] * v0
            acc += w1[:, None] * v1
        # out is (Z, n·n): pixel columns
        dst = out + (z64 * NN + pix.to(tl.int64)[:, None])
        tl.store(dst, acc, mask=pm[:, None] & zm[None, :])

    return triton, forward_kernel, backproject_kernel


# argument types of the kernels, for ahead-of-time compilation (:func:`compile_for`)
_FWD_SIGNATURE = {"table": "*fp32", "xs_ptr": "*fp32", "ys_ptr": "*fp32", "cnt_ptr": "*i32", "sin_ptr": "*fp32",
                  "cos_ptr": "*fp32", "out": "*fp32", "D": "i32", "Z": "i32", "n_dblocks": "i32", "n_f": "fp32",
                  "W": "i32", "BLOCK_D": "constexpr", "BLOCK_Z": "constexpr"}
_BP_SIGNATURE = {"table": "*fp32", "pix_ptr": "*i32", "cx_ptr": "*fp32", "cy_ptr": "*fp32", "u0_ptr": "*fp32",
                 "wa_ptr": "*fp32", "out": "*fp32", "P": "i32", "Z": "i32", "A": "i32", "n": "i32", "det": "i32",
                 "NN": "i32", "HAS_WEIGHTS": "constexpr", "BLOCK_P": "constexpr", "BLOCK_Z": "constexpr"}


def compile_for(arch: int) -> dict[str, str]:
    """Compile both kernels ahead of time for CUDA compute capability ``arch`` (e.g. 90 for an
    H100) without a GPU; returns each kernel's PTX. Raises what Triton raises for a kernel it cannot
    compile. Pointers and the slice and column counts are taken as multiples of 16, as Triton
    specialises them at launch for the usual volume sizes (what its vectorised loads rest on); the
    other sizes (n + 2, pixel counts) as not. Written against Triton 3.3's ``ASTSource``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton, fwd, bp = _kernels()
    aligned = [["tt.divisibility", 16]]
    out = {}
    (fd, fz, fw), (bpp, bz, bw) = TILES["forward"], TILES["backprojection"]
    for name, fn, signature, constexprs, warps in (
        ("forward", fwd, _FWD_SIGNATURE, {"BLOCK_D": fd, "BLOCK_Z": fz}, fw),
        ("backprojection", bp, _BP_SIGNATURE, {"HAS_WEIGHTS": True, "BLOCK_P": bpp, "BLOCK_Z": bz}, bw),
    ):
        attrs = {(i,): aligned for i, (k, t) in enumerate(signature.items())
                 if t.startswith("*") or k in ("D", "Z")}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps, "enable_fp_fusion": True})
        out[name] = compiled.asm["ptx"]
    return out


def _on(dev: torch.device) -> Any:
    """Context making ``dev`` the current CUDA device (a no-op for the interpreter's CPU tensors)."""
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()


def _check_tensor(t: torch.Tensor, what: str) -> None:
    if t.dtype != torch.float32:
        raise ValueError(f"the Triton projector takes float32 {what}, got {t.dtype}")
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(f"the Triton projector runs on CUDA tensors (or with TRITON_INTERPRET=1), "
                         f"got {what} on {t.device}")


def forward_project(volume: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """(A, Z, D) line integrals of a float32 (Z, n, n) volume: :func:`projector.forward_project`'s
    model (unit-step samples, bilinear, zero outside), without index tables."""
    from simaq_factory.tomo.projector import _check_volume, pixel_table, ray_starts

    _check_volume(volume, geom)
    _check_tensor(volume, "volumes")
    triton, fwd, _ = _kernels()
    dev = volume.device
    z, n, det = volume.shape[0], geom.n, geom.detectors
    width = n + 2
    out = torch.empty((geom.n_angles, z, det), dtype=torch.float32, device=dev)
    if z == 0 or geom.n_angles == 0:
        return out
    table = pixel_table(volume)
    xs, ys, count, sin_a, cos_a = ray_starts(geom, 0, geom.n_angles, dev)
    block_d, block_z, warps = TILES["forward"]
    n_dblocks = triton.cdiv(det, block_d)
    grid = (geom.n_angles * n_dblocks, triton.cdiv(z, block_z))
    with _on(dev):  # Triton launches on the current device
        fwd[grid](table, xs.to(torch.float32).contiguous(), ys.to(torch.float32).contiguous(),
                  count.to(torch.int32).contiguous(), sin_a.to(torch.float32).contiguous(),
                  cos_a.to(torch.float32).contiguous(), out, det, z, n_dblocks, float(n), width,
                  BLOCK_D=block_d, BLOCK_Z=block_z, num_warps=warps, enable_fp_fusion=True)
    return out


def backproject_table(proj: torch.Tensor, geom: Geometry, det_center: float, *, clip_circle: bool,
                      angle_weights: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`projector.backproject_table` (same arguments, float32) without index tables."""
    from simaq_factory.tomo.projector import backprojection_terms, check_table_args

    check_table_args(proj, geom, angle_weights)
    _check_tensor(proj, "projections")
    triton, _, bp = _kernels()
    dev = proj.device
    n_ang, z, det = proj.shape
    n = geom.n
    out = torch.zeros((z, n * n), dtype=torch.float32, device=dev)
    pix, cx, cy, u0 = backprojection_terms(geom, det_center, clip_circle, torch.float32, dev)
    if z == 0 or n_ang == 0 or pix.numel() == 0:
        return out.reshape(z, n, n)
    table = proj.permute(0, 2, 1).contiguous()  # (A, Dt, Z)
    wa = cx if angle_weights is None else angle_weights.to(device=dev, dtype=torch.float32).contiguous()
    block_p, block_z, warps = TILES["backprojection"]
    grid = (triton.cdiv(pix.numel(), block_p), triton.cdiv(z, block_z))
    with _on(dev):
        bp[grid](table, pix.to(torch.int32).contiguous(), cx.contiguous(), cy.contiguous(), u0.contiguous(), wa,
                 out, pix.numel(), z, n_ang, n, det, n * n,
                 HAS_WEIGHTS=angle_weights is not None, BLOCK_P=block_p, BLOCK_Z=block_z, num_warps=warps,
                 enable_fp_fusion=True)
    return out.reshape(z, n, n)


# relative tolerance of the self-check: the two paths differ by float rounding only (≈1e-6)
_SELF_CHECK_RTOL = 1e-4


@functools.cache
def self_check(device: str) -> str:
    """Compare both kernels with the table path on a small problem on ``device``, once per process.

    Returns ``""`` when they agree, else what went wrong (a compile or launch error, or the largest
    relative difference): a GPU, driver or Triton version that miscompiles them is found before a
    dataset is rendered with them. The problem spans several tiles of columns, pixels and slices
    (40 columns, 66 slices), so tile indexing is checked too.
    """
    from simaq_factory.tomo import projector

    dev = torch.device(device)
    try:
        gen = torch.Generator().manual_seed(0)
        geom = Geometry.from_degrees(24, [-50.0 + 100.0 * i / 4 for i in range(5)] + [90.0], det_count=40,
                                     det_spacing=0.7)
        vol = torch.rand((66, 24, 24), generator=gen).to(dev)

        def differs(name: str, got: torch.Tensor, want: torch.Tensor) -> str:
            err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30)
            return "" if err <= _SELF_CHECK_RTOL else (
                f"its {name} differs from the torch projector by {err:.2g} (relative)")

        ref = projector.forward_project(vol, geom, backend="torch")
        problem = differs("forward", forward_project(vol, geom), ref)
        if problem:  # the first failure is reported (the backprojection is not run)
            return problem
        weights = torch.linspace(0.5, 1.5, geom.n_angles).to(dev)
        return differs("backprojection",
                       backproject_table(ref, geom, geom.det_center, clip_circle=True, angle_weights=weights),
                       projector.backproject_table(ref, geom, geom.det_center, clip_circle=True,
                                                   angle_weights=weights, backend="torch"))
    except Exception as exc:  # noqa: BLE001 - any failure (compiler, driver) means: do not use it
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
