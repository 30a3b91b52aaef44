"""Pure-PyTorch parallel-beam forward projector and backprojector (CPU and CUDA, same code).

Both operators are sparse gathers expressed with :func:`torch.nn.functional.embedding_bag`
(``mode="sum"``, ``per_sample_weights``): the data is laid out as a table whose rows are
contiguous Z-vectors (all slices of one pixel, or of one detector column), every output row is a
weighted sum of table rows, and the interpolation indices/weights are built once per chunk of
angles (forward) or pixels (backprojection) and shared by all Z slices. Each output row is summed
by one thread in a fixed order, so CPU results do not depend on the thread count.

Forward model (ray-driven, scikit-image/torch-radon semantics): for each angle and detector column
the ray is sampled at unit steps ``s = k − c`` (k integer, ``c`` the rotation-centre index, the same
lattice scikit-image's rotate-and-sum uses) wherever the sample lies within one voxel of the grid,
each sample is bilinearly interpolated (zero outside the grid) and the samples are summed: a line
integral in voxel-length units.

Backprojection (pixel-driven): for every pixel and angle the detector coordinate is linearly
interpolated in the projection (zero outside the first…last column, as ``np.interp(left=0,
right=0)``) and the values are summed over angles with no weight. It is FBP's backprojector and only
approximately the adjoint of the forward model (≈1 %); the exact transpose, which iterative solvers
need, is :func:`simaq_factory.tomo.plan.adjoint_project` (built on :func:`ray_tables`).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

from simaq_factory.tomo.config import PROJECTOR_BACKENDS
from simaq_factory.tomo.geometry import Geometry

__all__ = ["BACKENDS", "DEFAULT_CHUNK_BYTES", "KernelCheckFailed", "backproject", "forward_project",
           "check_backend", "ray_tables", "resolved_backend", "use_kernels"]

#: Default bound on the temporaries of one chunk (indices, weights, coordinates, partial output).
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
# Chunks are also kept near cache size on the CPU: measured at 256², 64 slices on 2 cores, 4–8
# angles per chunk (≈ 50–100 MB) ran ~10 % faster than 16 and ~2× faster than 32. A GPU has no such
# optimum below the caller's bound, and each chunk costs some 40 kernel launches: it uses the bound.
_CACHE_CHUNK_BYTES = 48 * 1024 * 1024


def _chunk_budget(max_chunk_bytes: int, device: torch.device) -> int:
    """Bytes of temporaries per chunk on ``device``."""
    return int(max_chunk_bytes) if device.type == "cuda" else min(int(max_chunk_bytes), _CACHE_CHUNK_BYTES)


#: Values of ``backend`` (and of the recipe's ``execution.projector``).
BACKENDS = PROJECTOR_BACKENDS  # execution.projector


class KernelCheckFailed(RuntimeError):
    """The Triton kernels were asked for and do not agree with the table path on this device."""


def use_kernels(backend: str, data: torch.Tensor) -> bool:
    """Whether ``backend`` sends ``data`` to the Triton kernels (:mod:`simaq_factory.tomo.kernels`).

    ``"torch"``: never. ``"auto"``: for float32 CUDA tensors when Triton imports and the kernels
    pass their self-check on that GPU (once per process; a failure is logged once and the table path
    used). ``"triton"``: always; ``ValueError`` for other dtypes, CPU tensors (unless Triton
    interprets, ``TRITON_INTERPRET=1``) or no Triton, :class:`KernelCheckFailed` when the self-check
    fails.
    """
    if backend == "torch":
        return False
    check_backend(backend, data.device)  # the name; for "triton", Triton and a CUDA device
    from simaq_factory.tomo import kernels

    if backend == "auto":
        if data.device.type != "cuda" or data.dtype != torch.float32 or not kernels.available():
            return False
        problem = kernels.self_check(str(data.device))
        if problem:
            _warn_once(f"the Triton projector failed its self-check on {data.device} ({problem}); "
                       "using the torch projector")
        return not problem
    if data.dtype != torch.float32:
        raise ValueError(f"projector backend 'triton' takes float32 data, got {data.dtype}")
    problem = kernels.self_check(str(data.device))
    if problem:
        raise KernelCheckFailed(f"the Triton projector failed its self-check on {data.device}: {problem}; "
                                "use the torch projector (execution.projector: torch)")
    return True


def check_backend(backend: str, device: torch.device | str) -> None:
    """``ValueError`` unless ``backend`` can run on ``device``: a known name, and for ``"triton"``
    Triton installed and a CUDA device (or Triton's interpreter). Cheap: compiles nothing."""
    if backend not in BACKENDS:
        raise ValueError(f"projector backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "triton":
        return
    from simaq_factory.tomo import kernels

    # the device first: on a CPU, installing Triton (~1 GB) would only lead to this refusal
    if torch.device(device).type != "cuda" and not kernels.interpreting():
        raise ValueError(f"projector backend 'triton' runs on CUDA, not on {device}")
    if not kernels.available():
        raise ValueError("projector backend 'triton' needs Triton (it comes with CUDA builds of torch; "
                         "pip install 'simaq-factory[triton]')")


@functools.cache
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def resolved_backend(backend: str, device: torch.device) -> str:
    """What :func:`use_kernels` picks for float32 data on ``device``, for provenance records:
    ``"torch"`` or ``"triton X.Y.Z"`` (raises as :func:`use_kernels` does)."""
    probe = torch.zeros(1, dtype=torch.float32, device=device)
    if not use_kernels(backend, probe):
        return "torch"
    import triton

    return f"triton {triton.__version__}"


def pixel_table(volume: torch.Tensor) -> torch.Tensor:
    """The (n + 2)², Z table both forward projectors gather from: pixel (y, x) of every slice is row
    ``(y + 1)·(n + 2) + x + 1`` (Z innermost), with a one-voxel zero border, so any sample within
    the grid ±1 reads in bounds."""
    z, n = volume.shape[0], volume.shape[-1]
    return F.pad(volume, (1, 1, 1, 1)).reshape(z, (n + 2) * (n + 2)).t().contiguous()


def _check_geometry(geom: Geometry) -> None:
    if not isinstance(geom, Geometry):  # None, a dict: an AttributeError on its first field otherwise
        raise ValueError(f"geom must be a simaq_factory.tomo.Geometry, got {type(geom).__name__}")


def _check_volume(volume: torch.Tensor, geom: Geometry) -> None:
    _check_geometry(geom)
    if not isinstance(volume, torch.Tensor) or volume.ndim != 3:
        raise ValueError(f"volume must be a (Z, Y, X) tensor, got {type(volume).__name__} {getattr(volume, 'shape', '')}")
    if not volume.is_floating_point():
        raise ValueError(f"volume must be floating point, got {volume.dtype}")
    if tuple(volume.shape[1:]) != (geom.n, geom.n):
        raise ValueError(f"volume slices must be {geom.n}×{geom.n} for this geometry, got {tuple(volume.shape[1:])}")


def _check_proj(proj: torch.Tensor, geom: Geometry, det: int | None = None) -> None:
    """``proj`` an (A, Z, D) floating tensor for ``geom``; ``det``: D (default ``geom.detectors``)."""
    _check_geometry(geom)
    det = geom.detectors if det is None else det
    if not isinstance(proj, torch.Tensor) or proj.ndim != 3:
        raise ValueError(f"projections must be an (A, Z, D) tensor, got {getattr(proj, 'shape', type(proj))}")
    if not proj.is_floating_point():
        raise ValueError(f"projections must be floating point, got {proj.dtype}")
    if proj.shape[0] != geom.n_angles or proj.shape[2] != det:
        raise ValueError(
            f"projections must be (A={geom.n_angles}, Z, D={det}) for this geometry, got {tuple(proj.shape)}"
        )


def _angles(geom: Geometry, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.tensor(geom.angles, dtype=torch.float64)
    return torch.cos(theta).to(device), torch.sin(theta).to(device)


def _slab(p0: torch.Tensor, dp: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter interval where ``p0 + s·dp`` lies in the open interval (lo, hi) (float64)."""
    tiny = dp.abs() < 1e-12
    safe = torch.where(tiny, torch.ones_like(dp), dp)
    a, b = (lo - p0) / safe, (hi - p0) / safe
    inside = (p0 > lo) & (p0 < hi)
    big = torch.full_like(p0, 1e18)
    s_lo = torch.where(tiny, torch.where(inside, -big, big), torch.minimum(a, b))
    s_hi = torch.where(tiny, torch.where(inside, big, -big), torch.maximum(a, b))
    return s_lo, s_hi


def _max_ray_samples(n: int) -> int:
    """Upper bound on the unit-step samples of one ray through the (n + 2)² padded grid."""
    return int(math.ceil(math.sqrt(2.0) * (n + 1))) + 2


def _ray_table_bytes_per_angle(geom: Geometry, itemsize: int) -> int:
    """Bytes of the temporaries :func:`ray_tables` allocates per angle (indices, weights, coordinates)."""
    return geom.detectors * _max_ray_samples(geom.n) * (4 * (4 + itemsize) + 10 * itemsize)


def ray_starts(
    geom: Geometry, a0: int, a1: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """First samples of the rays of angles ``a0 … a1 − 1`` (internal helper, float64).

    Returns ``(xs, ys, count, sin, cos)``: per ray (R = (a1 − a0)·D, in (angle, column) order) the
    (x, y) pixel coordinates of its first sample and its number of samples; per angle the step
    (sin θ, cos θ) from one sample to the next. Sample k of ray r is ``(xs + k·sin, ys + k·cos)``.
    """
    n, det, c = geom.n, geom.detectors, geom.image_center
    cos_all, sin_all = _angles(geom, device)
    t = (torch.arange(det, dtype=torch.float64, device=device) - geom.det_center) * geom.det_spacing
    co = cos_all[a0:a1, None].expand(-1, det)
    si = sin_all[a0:a1, None].expand(-1, det)
    x0, y0 = c + co * t, c - si * t  # ray points at s = 0
    lx, hx = _slab(x0, si, -1.0, float(n))
    ly, hy = _slab(y0, co, -1.0, float(n))
    k_lo = torch.ceil(torch.maximum(lx, ly) + c).clamp(-1e9, 1e9)
    k_hi = torch.floor(torch.minimum(hx, hy) + c).clamp(-1e9, 1e9)
    count = (k_hi - k_lo + 1).clamp(min=0).reshape(-1)
    s0 = k_lo - c
    xs = (x0 + si * s0).reshape(-1)
    ys = (y0 + co * s0).reshape(-1)
    return xs, ys, count, sin_all[a0:a1], cos_all[a0:a1]


def ray_tables(
    geom: Geometry, a0: int, a1: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation indices and weights of the rays of angles ``a0 … a1 − 1`` (internal helper).

    Returns ``(idx, weights)``, both (R, L·4) with R = (a1 − a0)·D rays in (angle, column) order:
    ``idx`` int32 rows of the zero-bordered (n + 2)² pixel table (pixel (y, x) is row
    ``(y + 1)·(n + 2) + x + 1``), ``weights`` in ``dtype`` (0 for padding samples). The line
    integral of ray r is ``Σ_j weights[r, j] · table[idx[r, j]]``; :func:`forward_project` and the
    matched backprojector (:mod:`simaq_factory.tomo.plan`) both use exactly these numbers.
    """
    n, det = geom.n, geom.detectors
    width = n + 2
    xs64, ys64, count, sin_a, cos_a = ray_starts(geom, a0, a1, device)
    n_rays = xs64.numel()
    count = count.reshape(-1, 1)
    length = max(1, int(count.max().item())) if n_rays else 1
    xs, ys = xs64.reshape(-1, 1).to(dtype), ys64.reshape(-1, 1).to(dtype)
    si = sin_a[:, None].expand(-1, det).reshape(-1, 1).to(dtype)
    co = cos_a[:, None].expand(-1, det).reshape(-1, 1).to(dtype)
    step = torch.arange(length, dtype=dtype, device=device).unsqueeze(0)
    x = torch.addcmul(xs, si, step).clamp_(-1.0, float(n))
    y = torch.addcmul(ys, co, step).clamp_(-1.0, float(n))
    # floor clamped to n - 1 so that a sample at exactly n takes the zero border with weight 1
    xf, yf = x.floor().clamp_(max=n - 1), y.floor().clamp_(max=n - 1)
    fx, fy = x.sub_(xf), y.sub_(yf)
    # integer arithmetic: y·(n + 2) + x in float32 rounds to a neighbour once it passes 2^24 (n = 4096)
    base = yf.to(torch.int32).mul_(width).add_(xf.to(torch.int32)).add_(width + 1)
    idx = torch.stack([base, base + 1, base + width, base + (width + 1)], dim=-1)
    valid = (step < count.to(dtype)).to(dtype)
    gy = (1.0 - fy).mul_(valid)
    fy = fy.mul_(valid)
    gx = 1.0 - fx
    weights = torch.stack([gy * gx, gy * fx, fy * gx, fy * fx], dim=-1)
    return idx.reshape(n_rays, -1), weights.reshape(n_rays, -1)


def forward_project(
    volume: torch.Tensor, geom: Geometry, *, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    backend: str = "torch",
) -> torch.Tensor:
    """Parallel-beam line integrals of every z-slice.

    Args:
        volume: (Z, Y, X) floating tensor (float32 typical), Y = X = ``geom.n``, any device.
        geom: the scan geometry.
        max_chunk_bytes: bound on per-chunk temporaries; angles are processed in chunks under it.
        backend: ``"torch"`` (these tables), ``"triton"`` (:mod:`simaq_factory.tomo.kernels`, the
            same model without tables) or ``"auto"`` (Triton for float32 CUDA tensors where it
            passes its self-check); see :func:`use_kernels`.

    Returns:
        (A, Z, D) tensor (same dtype/device) of line integrals in voxel-length units, in the order
        of ``geom.angles``. Its exact transpose is :func:`simaq_factory.tomo.plan.adjoint_project`.
    """
    _check_volume(volume, geom)
    if use_kernels(backend, volume):
        from simaq_factory.tomo import kernels

        return kernels.forward_project(volume, geom)
    dev, dtype = volume.device, volume.dtype
    z = volume.shape[0]
    det = geom.detectors
    table = pixel_table(volume)
    out = torch.empty((geom.n_angles, det, z), dtype=dtype, device=dev)
    if z == 0:
        return out.permute(0, 2, 1)

    itemsize = volume.element_size()
    per_angle = _ray_table_bytes_per_angle(geom, itemsize) + det * z * itemsize
    budget = _chunk_budget(max_chunk_bytes, dev)
    chunk = max(1, min(geom.n_angles, budget // max(per_angle, 1)))
    for a0 in range(0, geom.n_angles, chunk):
        a1 = min(a0 + chunk, geom.n_angles)
        idx, weights = ray_tables(geom, a0, a1, dtype, dev)
        rows = F.embedding_bag(idx, table, mode="sum", per_sample_weights=weights)
        out[a0:a1] = rows.reshape(a1 - a0, det, z)
    return out.permute(0, 2, 1).contiguous()


def backprojection_terms(
    geom: Geometry, det_center: float, clip_circle: bool, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixels a backprojection visits and its per-angle coefficients (internal helper).

    Returns ``(pix, cx, cy, u0)``: int64 indices ``y·n + x`` of the pixels (those inside the
    reconstruction circle when ``clip_circle``, else all), and (A,) ``dtype`` coefficients such that
    pixel (y, x) meets angle a's projection at column ``u0[a] + x·cx[a] + y·cy[a]`` (column 0 at
    ``det_center``).
    """
    n, c, sp = geom.n, geom.image_center, geom.det_spacing
    if clip_circle:
        yy, xx = torch.meshgrid(
            torch.arange(n, dtype=torch.float64, device=device),
            torch.arange(n, dtype=torch.float64, device=device),
            indexing="ij",
        )
        r = geom.circle_radius
        keep = ((xx.reshape(-1) - c) ** 2 + (yy.reshape(-1) - c) ** 2) <= r * r
        pix = torch.nonzero(keep).reshape(-1)
    else:
        pix = torch.arange(n * n, device=device)
    cos_a, sin_a = _angles(geom, device)
    cx, cy = (cos_a / sp).to(dtype), (-sin_a / sp).to(dtype)
    u0 = (det_center - (cos_a * c - sin_a * c) / sp).to(dtype)
    return pix, cx, cy, u0


def check_table_args(proj: torch.Tensor, geom: Geometry, angle_weights: torch.Tensor | None) -> None:
    """``ValueError`` unless :func:`backproject_table` can take these (any column count >= 2)."""
    if not isinstance(proj, torch.Tensor) or proj.ndim != 3 or proj.shape[0] != geom.n_angles:
        raise ValueError(f"projections must be an (A={geom.n_angles}, Z, D) tensor for this geometry, "
                         f"got {tuple(getattr(proj, 'shape', ()))}")
    if proj.shape[2] < 2:
        raise ValueError("need at least 2 detector columns to interpolate")
    if angle_weights is not None and tuple(angle_weights.shape) != (geom.n_angles,):
        raise ValueError(f"angle_weights must have shape ({geom.n_angles},), got {tuple(angle_weights.shape)}")


def backproject_table(
    proj: torch.Tensor,
    geom: Geometry,
    det_center: float,
    *,
    clip_circle: bool,
    angle_weights: torch.Tensor | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    backend: str = "torch",
) -> torch.Tensor:
    """Backprojection of an (A, Z, Dt) stack whose column 0 sits at ``det_center`` (internal helper).

    ``angle_weights`` (A,) multiplies each projection's contribution (FBP's angular weighting).
    Pixels outside the reconstruction circle are skipped (left 0) when ``clip_circle``.
    ``backend`` as for :func:`forward_project`.
    """
    check_table_args(proj, geom, angle_weights)
    if use_kernels(backend, proj):
        from simaq_factory.tomo import kernels

        return kernels.backproject_table(proj, geom, det_center, clip_circle=clip_circle,
                                         angle_weights=angle_weights)
    dev, dtype = proj.device, proj.dtype
    n_ang, z, det = proj.shape
    n = geom.n
    out = torch.zeros((n * n, z), dtype=dtype, device=dev)
    if z == 0:
        return out.t().reshape(z, n, n)
    table = proj.permute(0, 2, 1).contiguous().reshape(n_ang * det, z)

    pix, cx, cy, u0 = backprojection_terms(geom, det_center, clip_circle, dtype, dev)
    yy = torch.div(pix, n, rounding_mode="floor").to(torch.float64)
    xx = (pix % n).to(torch.float64)
    row0 = torch.arange(n_ang, device=dev, dtype=torch.int32) * det
    wa = None if angle_weights is None else angle_weights.to(device=dev, dtype=dtype)

    itemsize = proj.element_size()
    per_pixel = n_ang * (2 * (4 + itemsize) + 8 * itemsize) + z * itemsize
    chunk = max(1, _chunk_budget(max_chunk_bytes, dev) // per_pixel)
    n_pix = yy.numel()
    for p0 in range(0, n_pix, chunk):
        xs = xx[p0 : p0 + chunk, None].to(dtype)
        ys = yy[p0 : p0 + chunk, None].to(dtype)
        u = torch.addcmul(torch.addcmul(u0, xs, cx), ys, cy)  # (P, A) fractional column
        valid = ((u >= 0) & (u <= det - 1)).to(dtype)
        i0 = u.floor().clamp_(0, det - 2)
        frac = u.sub_(i0)
        w1 = frac.mul_(valid)
        w0 = valid.sub_(w1)
        if wa is not None:
            w0.mul_(wa)
            w1.mul_(wa)
        base = i0.to(torch.int32).add_(row0)
        idx = torch.stack([base, base + 1], dim=-1).reshape(base.shape[0], -1)
        weights = torch.stack([w0, w1], dim=-1).reshape(base.shape[0], -1)
        rows = F.embedding_bag(idx, table, mode="sum", per_sample_weights=weights)
        if not clip_circle:
            out[p0 : p0 + chunk] = rows
        else:
            out.index_copy_(0, pix[p0 : p0 + chunk], rows)
    return out.t().reshape(z, n, n).contiguous()


def backproject(
    proj: torch.Tensor,
    geom: Geometry,
    *,
    clip_circle: bool = False,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    backend: str = "torch",
) -> torch.Tensor:
    """Pixel-driven linear-interpolation backprojection, plain sum over angles (no weight).

    Not the exact adjoint of :func:`forward_project`; use :func:`~simaq_factory.tomo.plan.adjoint_project`
    for that.

    Args:
        proj: (A, Z, D) floating tensor, D = ``geom.det_count``, any device.
        geom: the scan geometry.
        clip_circle: leave pixels outside the reconstruction circle (radius ``n // 2`` around the
            axis) at 0 (and skip their work).
        max_chunk_bytes: bound on per-chunk temporaries (pixels are processed in chunks).
        backend: as for :func:`forward_project`.

    Returns:
        (Z, Y, X) tensor, same dtype/device.
    """
    _check_proj(proj, geom, geom.detectors)
    return backproject_table(
        proj, geom, geom.det_center, clip_circle=clip_circle, max_chunk_bytes=max_chunk_bytes, backend=backend
    )
