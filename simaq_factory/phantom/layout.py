"""Multi-cell layout: minimise the paper's eq. 3 loss in the layout plane (reference §1.9).

Each cell is a disc of radius ρᵢ in a 2D plane (generation units). The loss is the reference
code's version of eq. 3, vectorised over all pairs i < j:

    gap_ij = ρᵢ + ρⱼ − ‖pᵢ − pⱼ‖ + ε,   pen_ij = gap_ij² if gap_ij > t else max(gap_ij, 0),
    L = Σ_{i<j} pen_ij + w·Σᵢ ‖pᵢ‖

minimised with Adam (NumPy, analytic gradient). Fixes relative to the reference (bug 9):
ρᵢ includes the wall (the reference used the body radius, so walls could touch), the stop rule
demands a real clearance (every pair ≥ ε/2 apart, not "pairwise loss ≤ n·ε", which tolerated
overlap), and a run that ends with overlap is restarted from a fresh random start and finally
raises :class:`PhantomLayoutError` instead of being accepted silently.
"""

from __future__ import annotations

import logging

import numpy as np

from simaq_factory import portable_math
from simaq_factory.phantom.config import LayoutConfig

__all__ = ["PhantomLayoutError", "layout_loss", "layout_discs", "min_clearance"]

log = logging.getLogger(__name__)

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


class PhantomLayoutError(RuntimeError):
    """The cells could not be arranged without overlap (or could not be fitted into the volume)."""


def min_clearance(pos: np.ndarray, rho: np.ndarray) -> float:
    """min over pairs of ‖pᵢ − pⱼ‖ − ρᵢ − ρⱼ (inf for fewer than two discs)."""
    n = len(rho)
    if n < 2:
        return float("inf")
    iu = np.triu_indices(n, 1)
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)[iu]
    return float(np.min(d - (rho[:, None] + rho[None, :])[iu]))


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) of every pair i < j. The loss works on them with indexing and sequential
    sums (no matrix products, whose summation order depends on the BLAS kernel of the CPU), so a
    layout is the same on every worker machine."""
    return np.triu_indices(n, 1)


def _scatter_pairs(g: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
    """(n, 2): Σ over the pairs (i, j) of +g at i and −g at j, in a fixed sequential order."""
    i, j = pairs
    out = np.zeros((n, g.shape[1]))
    for axis in range(g.shape[1]):
        out[:, axis] = np.bincount(i, g[:, axis], minlength=n) - np.bincount(j, g[:, axis], minlength=n)
    return out


def _loss_and_grad(
    pos: np.ndarray, rho_pair: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], cfg: LayoutConfig
) -> tuple[float, np.ndarray, float, float]:
    """(L, dL/dpos (n, 2), pairwise part, min clearance) over ``pairs``."""
    diff = pos[pairs[0]] - pos[pairs[1]]  # (P, 2) p_i − p_j
    dist = np.sqrt(np.sum(diff * diff, axis=-1))
    gap = rho_pair - dist + cfg.gap_eps
    quad = gap > cfg.quadratic_threshold
    pen = np.where(quad, gap * gap, np.maximum(gap, 0.0))
    dpen = np.where(quad, 2.0 * gap, (gap > 0.0).astype(np.float64))
    ok = dist > 1e-12
    # d gap_ij / d p_i = −(p_i − p_j)/‖p_i − p_j‖; coincident points get a fixed direction.
    unit = np.where(ok[:, None], diff / np.where(ok, dist, 1.0)[:, None], np.array([1.0, 0.0]))
    grad = -_scatter_pairs(dpen[:, None] * unit, pairs, len(pos))
    norm = np.sqrt(np.sum(pos * pos, axis=-1))
    grad += cfg.compactness * pos / np.maximum(norm, 1e-12)[:, None]
    pair = float(np.sum(pen))
    clearance = float(np.min(dist - rho_pair)) if len(dist) else float("inf")
    return pair + cfg.compactness * float(np.sum(norm)), grad, pair, clearance


def layout_loss(pos: np.ndarray, rho: np.ndarray, cfg: LayoutConfig) -> tuple[float, np.ndarray, float]:
    """Loss L, its gradient (n, 2) and the pairwise part, for positions ``pos`` (n, 2)."""
    rho = np.asarray(rho, dtype=np.float64)
    pairs = _pairs(len(rho))
    loss, grad, pair, _ = _loss_and_grad(pos, rho[pairs[0]] + rho[pairs[1]], pairs, cfg)
    return loss, grad, pair


def _run(pos: np.ndarray, rho: np.ndarray, cfg: LayoutConfig) -> tuple[np.ndarray, int]:
    """Adam on eq. 3 until every pair is clear by ≥ ε/2 or ``max_iter`` steps; (positions, steps)."""
    pairs = _pairs(len(rho))
    rho_pair = rho[pairs[0]] + rho[pairs[1]]
    m = np.zeros_like(pos)
    v = np.zeros_like(pos)
    target = 0.5 * cfg.gap_eps
    b1, b2 = 1.0, 1.0
    for it in range(cfg.max_iter):
        _, grad, _, clearance = _loss_and_grad(pos, rho_pair, pairs, cfg)
        if clearance >= target:
            return pos, it
        m = _BETA1 * m + (1 - _BETA1) * grad
        v = _BETA2 * v + (1 - _BETA2) * grad * grad
        b1 *= _BETA1
        b2 *= _BETA2
        pos = pos - cfg.lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + _ADAM_EPS)
    return pos, cfg.max_iter


def layout_discs(rho: np.ndarray, cfg: LayoutConfig, rng: np.random.Generator, *,
                 warn: bool = True) -> np.ndarray:
    """Positions (n, 2) float64 of discs with radii ``rho`` (n,), pairwise clear by ≥ ε/2.

    Starts from N(0, init_std²) positions; restarts up to ``cfg.max_restarts`` times (each failed
    attempt a warning, unless ``warn`` is false); raises :class:`PhantomLayoutError` when every
    attempt ends with overlap.
    """
    rho = np.asarray(rho, dtype=np.float64)
    n = len(rho)
    for attempt in range(cfg.max_restarts + 1):
        start = rng.normal(0.0, cfg.init_std, size=(n, 2)) if cfg.init_std > 0 else np.zeros((n, 2))
        if n > 1 and cfg.init_std == 0:
            # Identical starts have no separating gradient direction: spread them on a tiny circle.
            ang = 2 * np.pi * np.arange(n) / n
            start = 1e-3 * np.stack([portable_math.cos(ang), portable_math.sin(ang)], axis=-1)
        pos, iters = _run(start, rho, cfg)
        clearance = min_clearance(pos, rho)
        if clearance >= 0.5 * cfg.gap_eps:
            log.debug("layout of %d cells: %d iterations, attempt %d", n, iters, attempt)
            return pos
        if warn:
            log.warning("layout attempt %d of %d cells ended with overlap %.3g", attempt, n, -clearance)
    raise PhantomLayoutError(
        f"could not lay out {n} cells without overlap in {cfg.max_restarts + 1} attempts of "
        f"{cfg.max_iter} iterations (raise phantom.layout.max_iter or lr)"
    )
