"""Iterative reconstruction on the package's projector: SIRT (Landweber) and CGLS (design §7, §8).

Both solve ``A x ≈ p`` slice by slice, with ``A`` the bilinear ray-driven projector
(:func:`~simaq_factory.tomo.projector.forward_project`) and ``Aᵀ`` its exact transpose, applied through
a :class:`~simaq_factory.tomo.plan.ProjectorPlan` built once per call (its tables are cached for
the whole run within the plan's memory bound and dropped afterwards). With ``clip_circle`` (the
pipeline's default) the unknowns are the pixels inside the reconstruction circle only; the output
is 0 outside it, as FBP's.

Unlike FBP, the result does not depend on an angular weighting: it is the attenuation per voxel
length whatever the tilt arc (the missing wedge still leaves the problem underdetermined, and the
iterations regularise by stopping early).

* :func:`sirt`: ``x ← x + λ · C Aᵀ R (p − A x)`` with ``R = 1 / (row sums of A)`` and
  ``C = 1 / (column sums of A)`` (0 where a sum is 0: rays that miss the support, pixels no ray
  sees), ``λ = relaxation``. Optional non-negativity clamps after every iteration (projected SIRT,
  which still decreases ``‖A x − p‖_R`` monotonically for 0 < λ ≤ 1).
* :func:`cgls`: conjugate gradients on the normal equations ``AᵀA x = Aᵀ p``, run independently on
  every z-slice (per-slice step sizes, so a slice's result does not depend on its neighbours).
  Classic CGLS is unconstrained; ``nonneg`` clamps negatives **once after the last iteration**
  (clamping inside the loop breaks the conjugacy that CGLS relies on).

Determinism: every operation is elementwise or a fixed-order :func:`torch.nn.functional.embedding_bag`
gather; CGLS's per-slice inner products are accumulated in float64 by a single-bag gather (not a
thread-split reduction), so CPU results do not depend on the thread count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from simaq_factory.tomo.geometry import Geometry
from simaq_factory.tomo.plan import DEFAULT_CACHE_BYTES, ProjectorPlan
from simaq_factory.tomo.projector import _check_proj

__all__ = ["cgls", "column_dot", "sirt"]

logger = logging.getLogger(__name__)

#: ``callback(k, x)`` is called after iteration ``k`` (1-based) with the (Z, n, n) iterate.
Callback = Callable[[int, torch.Tensor], None]


def column_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-column inner products of two (M, Z) tables, float64 shape (Z,), summed in fixed row order.

    A single-bag ``embedding_bag`` sums the M rows sequentially for every column, so the result does
    not depend on the number of threads (a ``torch.sum`` over M may split the rows among threads).
    """
    prod = a.to(torch.float64) * b.to(torch.float64)
    if prod.shape[0] == 0:
        return torch.zeros(prod.shape[1], dtype=torch.float64, device=prod.device)
    idx = torch.arange(prod.shape[0], device=prod.device)
    off = torch.zeros(1, dtype=torch.long, device=prod.device)
    return F.embedding_bag(idx, prod, off, mode="sum")[0]


def _setup(
    proj: torch.Tensor, geom: Geometry, x0: torch.Tensor | None, iterations: int,
    clip_circle: bool, max_cache_bytes: int,
) -> tuple[ProjectorPlan, torch.Tensor, torch.Tensor]:
    _check_proj(proj, geom, geom.detectors)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    plan = ProjectorPlan(
        geom, dtype=proj.dtype, device=proj.device, clip_circle=clip_circle, max_cache_bytes=max_cache_bytes
    )
    p = plan.proj_to_rows(proj)
    if x0 is None:
        x = torch.zeros((plan.n_pixels, proj.shape[1]), dtype=proj.dtype, device=proj.device)
    else:
        if x0.shape != (proj.shape[1], geom.n, geom.n):
            raise ValueError(f"x0 must be (Z, n, n) = {(proj.shape[1], geom.n, geom.n)}, got {tuple(x0.shape)}")
        x = plan.volume_to_rows(x0)
    return plan, p, x


def _safe_reciprocal(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))


def sirt(
    proj: torch.Tensor,
    geom: Geometry,
    *,
    iterations: int,
    nonneg: bool = True,
    x0: torch.Tensor | None = None,
    relaxation: float = 1.0,
    clip_circle: bool = True,
    callback: Callback | None = None,
    max_cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> torch.Tensor:
    """SIRT (row/column-normalised Landweber) reconstruction.

    Args:
        proj: (A, Z, D) floating tensor of line integrals (voxel units), any device.
        geom: the scan geometry (``weighting`` is ignored).
        iterations: number of SIRT updates (0 returns the (masked) start).
        nonneg: clamp the iterate to ``>= 0`` after every update.
        x0: optional (Z, n, n) start (default zeros); masked to the circle when ``clip_circle``.
        relaxation: step ``λ`` in (0, 2); 1 is the classic SIRT.
        clip_circle: unknowns only inside the reconstruction circle (output 0 outside).
        callback: ``callback(k, x)`` after each iteration with the (Z, n, n) iterate (costs a copy).
        max_cache_bytes: bound on the cached projector tables (see :mod:`~simaq_factory.tomo.plan`).

    Returns:
        (Z, n, n) reconstruction, same dtype/device as ``proj``.
    """
    if not 0.0 < relaxation < 2.0:
        raise ValueError(f"relaxation must be in (0, 2), got {relaxation}")
    plan, p, x = _setup(proj, geom, x0, iterations, clip_circle, max_cache_bytes)
    dt, dev = proj.dtype, proj.device
    row_w = _safe_reciprocal(plan.forward_rows(torch.ones((plan.n_pixels, 1), dtype=dt, device=dev)))
    col_w = _safe_reciprocal(plan.adjoint_rows(torch.ones((plan.n_rays, 1), dtype=dt, device=dev)))
    col_w.mul_(relaxation)
    if nonneg:
        x.clamp_(min=0)
    for k in range(1, iterations + 1):
        res = p - plan.forward_rows(x)
        res.mul_(row_w)
        x.addcmul_(col_w, plan.adjoint_rows(res))
        if nonneg:
            x.clamp_(min=0)
        if callback is not None:
            callback(k, plan.rows_to_volume(x))
    logger.debug("sirt: %d iterations, %d angles, nonneg=%s", iterations, geom.n_angles, nonneg)
    return plan.rows_to_volume(x)


def cgls(
    proj: torch.Tensor,
    geom: Geometry,
    *,
    iterations: int,
    nonneg: bool = False,
    x0: torch.Tensor | None = None,
    clip_circle: bool = True,
    callback: Callback | None = None,
    max_cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> torch.Tensor:
    """CGLS (conjugate gradients on ``AᵀA x = Aᵀ p``), independently per z-slice.

    Args:
        proj: (A, Z, D) floating tensor of line integrals (voxel units), any device.
        geom: the scan geometry (``weighting`` is ignored).
        iterations: number of CG steps (k steps give the least-squares minimiser over the k-th
            Krylov space, the same iterate as LSQR's in exact arithmetic).
        nonneg: clamp negatives to 0 once after the last iteration (the iterations are unconstrained).
        x0: optional (Z, n, n) start (default zeros); masked to the circle when ``clip_circle``.
        clip_circle: unknowns only inside the reconstruction circle (output 0 outside).
        callback: ``callback(k, x)`` after each iteration with the (unclamped) (Z, n, n) iterate.
        max_cache_bytes: bound on the cached projector tables (see :mod:`~simaq_factory.tomo.plan`).

    Returns:
        (Z, n, n) reconstruction, same dtype/device as ``proj``.
    """
    plan, p, x = _setup(proj, geom, x0, iterations, clip_circle, max_cache_bytes)
    r = p - plan.forward_rows(x) if x0 is not None else p.clone()
    s = plan.adjoint_rows(r)
    d = s.clone()
    gamma = column_dot(s, s)
    for k in range(1, iterations + 1):
        q = plan.forward_rows(d)
        qq = column_dot(q, q)
        alpha = torch.where(qq > 0, gamma / torch.where(qq > 0, qq, torch.ones_like(qq)), torch.zeros_like(qq))
        alpha = alpha.to(x.dtype)[None, :]
        x.addcmul_(alpha, d)
        r.addcmul_(alpha, q, value=-1.0)
        s = plan.adjoint_rows(r)
        gamma_new = column_dot(s, s)
        beta = torch.where(gamma > 0, gamma_new / torch.where(gamma > 0, gamma, torch.ones_like(gamma)),
                           torch.zeros_like(gamma))
        d = torch.addcmul(s, beta.to(x.dtype)[None, :], d)
        gamma = gamma_new
        if callback is not None:
            callback(k, plan.rows_to_volume(x))
    if nonneg:
        x.clamp_(min=0)
    logger.debug("cgls: %d iterations, %d angles, nonneg=%s", iterations, geom.n_angles, nonneg)
    return plan.rows_to_volume(x)
