"""Exact geometric tests for axis-aligned ellipsoids, vectorised in NumPy (reference §1.8).

An ellipsoid is a centre ``c`` (..., 3) and radii ``r`` (..., 3) (any consistent units and axis
order); it holds the points x with Σ((x − c)/r)² ≤ 1. All functions broadcast over leading axes.

* :func:`ellipsoids_overlap` — Gilitschenski–Hanebeck test: with λᵢ = aᵢ²/bᵢ², vᵢ = Δᵢ/bᵢ,
  K(s) = 1 − Σᵢ vᵢ²·s(1 − s)/(1 + s(λᵢ − 1)); the ellipsoids overlap (touching included) iff
  min_{s∈(0,1)} K(s) ≥ 0. K is convex, so a coarse s-grid bracket plus golden-section refinement
  finds the minimum; coincident centres give K ≡ 1 (overlap) without special cases (fixes bug 26).
* :func:`max_level` — max over A of Σ((x − c_B)/r_B)² as a rigorous upper bound that is tight to
  round-off (Lagrange dual of the trust-region problem, λ by safeguarded Newton). A is inside B iff
  the maximum is ≤ 1 — an exact replacement for the reference's lenient grid test (bug 5); in the
  rare unconverged case the bound errs on the side of "not inside".
"""

from __future__ import annotations

import math

import numpy as np

from simaq_factory import portable_math

__all__ = ["ellipsoids_overlap", "ellipsoid_inside", "max_level", "fibonacci_sphere"]

_GRID = (np.arange(1, 33, dtype=np.float64) / 33.0)
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
_NEWTON_STEPS = 20


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (n, 3), float64 (deterministic)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    rho = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    theta = math.pi * (1.0 + math.sqrt(5.0)) * i
    return np.stack([z, rho * portable_math.cos(theta), rho * portable_math.sin(theta)], axis=-1)




def _k_of_s(s: np.ndarray, lam: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """K(s) for s (M, G) against per-pair lam, v2 (M, 3) → (M, G)."""
    ss = s[..., None]
    return 1.0 - np.sum(v2[:, None, :] * ss * (1.0 - ss) / (1.0 + ss * (lam[:, None, :] - 1.0)), axis=-1)


def _min_k(lam: np.ndarray, v2: np.ndarray, n_refine: int = 40) -> np.ndarray:
    """min over s ∈ (0, 1) of K(s), for (M, 3) inputs → (M,)."""
    m = lam.shape[0]
    grid = np.broadcast_to(_GRID, (m, _GRID.size))
    k = _k_of_s(grid, lam, v2)
    idx = np.argmin(k, axis=1)
    best = k[np.arange(m), idx]
    lo = np.where(idx > 0, _GRID[np.maximum(idx - 1, 0)], 0.0)
    hi = np.where(idx < _GRID.size - 1, _GRID[np.minimum(idx + 1, _GRID.size - 1)], 1.0)
    x1 = hi - _INV_PHI * (hi - lo)
    x2 = lo + _INV_PHI * (hi - lo)
    f1 = _k_of_s(x1[:, None], lam, v2)[:, 0]
    f2 = _k_of_s(x2[:, None], lam, v2)[:, 0]
    for _ in range(n_refine):
        left = f1 < f2  # the minimum lies in [lo, x2]
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
        x1n = np.where(left, hi - _INV_PHI * (hi - lo), x2)
        x2n = np.where(left, x1, lo + _INV_PHI * (hi - lo))
        fnew = _k_of_s(np.where(left, x1n, x2n)[:, None], lam, v2)[:, 0]
        f1, f2 = np.where(left, fnew, f2), np.where(left, f1, fnew)
        x1, x2 = x1n, x2n
    return np.minimum(best, np.minimum(f1, f2))


def ellipsoids_overlap(c1: np.ndarray, r1: np.ndarray, c2: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """True where ellipsoid 1 and ellipsoid 2 share a point (touching counts as overlap).

    Inputs broadcast to (..., 3); returns bool (...). Cheap bounding-sphere tests decide the clear
    cases; the exact K(s) test runs on the rest.
    """
    c1, r1, c2, r2 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (c1, r1, c2, r2)))
    shape = c1.shape[:-1]
    c1, r1, c2, r2 = (a.reshape(-1, 3) for a in (c1, r1, c2, r2))
    d = np.linalg.norm(c1 - c2, axis=-1)
    out = d <= r1.min(-1) + r2.min(-1)  # inscribed spheres meet → overlap
    unsure = ~out & (d <= r1.max(-1) + r2.max(-1))
    if np.any(unsure):
        lam = (r1[unsure] / r2[unsure]) ** 2
        v2 = ((c1[unsure] - c2[unsure]) / r2[unsure]) ** 2
        out[unsure] = _min_k(lam, v2) >= 0.0
    return out.reshape(shape)


def max_level(c_in: np.ndarray, r_in: np.ndarray, c_out: np.ndarray, r_out: np.ndarray) -> np.ndarray:
    """Rigorous, tight upper bound of max over ellipsoid A (c_in, r_in) of Σ((x − c_out)/r_out)².

    Writing x = c_in + r_in⊙u with |u| ≤ 1, the level is f(u) = Σ dᵢuᵢ² + 2gᵢuᵢ + h with
    d = (r_in/r_out)², g = Δ·r_in/r_out², h = Σ(Δ/r_out)² (its maximum is on the surface |u| = 1).
    Lagrange duality (exact for one quadratic constraint) gives, for every λ > max d,
    max f ≤ U(λ) = λ + Σ gᵢ²/(λ − dᵢ) + h, with equality at the root of Σ gᵢ²/(λ − dᵢ)² = 1
    (or λ → max d in the "hard case"). λ is found by safeguarded Newton steps; U(λ) is returned,
    so a containment decision U ≤ 1 is never lenient. Shape (...), float64.
    """
    c_in, r_in, c_out, r_out = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (c_in, r_in, c_out, r_out))
    )
    shape = c_in.shape[:-1]
    c_in, r_in, c_out, r_out = (a.reshape(-1, 3) for a in (c_in, r_in, c_out, r_out))
    delta = c_in - c_out
    d = (r_in / r_out) ** 2
    g2 = (delta * r_in / r_out**2) ** 2
    h = ((delta / r_out) ** 2).sum(-1)
    dmax = d.max(-1)
    floor = dmax * (1.0 + 1e-13) + 1e-300  # smallest λ used: keeps λ − dᵢ > 0
    lo = dmax.copy()
    hi = np.maximum(dmax + np.sqrt(g2.sum(-1)), floor)  # φ(hi) ≤ 1 ≤ φ(lo⁺) brackets the root
    lam = hi.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(_NEWTON_STEPS):
            den = np.maximum(lam[:, None] - d, 1e-300)
            phi = (g2 / den**2).sum(-1)
            dphi = -2.0 * (g2 / (den * den * den)).sum(-1)
            big = phi > 1.0
            lo = np.where(big, lam, lo)
            hi = np.where(big, hi, lam)
            # Newton on q(λ) = φ^(-1/2) − 1 (nearly linear in λ), safeguarded by bisection.
            # powers spelled with exact operations (see simaq_factory.portable_math)
            inv_sqrt = 1.0 / np.sqrt(phi)
            q = inv_sqrt - 1.0
            dq = -0.5 * (inv_sqrt / phi) * dphi
            step = lam - q / dq
            ok = np.isfinite(step) & (step > lo) & (step <= hi)
            new = np.where(ok, step, 0.5 * (lo + hi))
            if np.all(np.abs(new - lam) <= 1e-14 * np.abs(lam)):
                lam = new
                break
            lam = new
        lam = np.maximum(lam, floor)
        den = lam[:, None] - d
        terms = np.where(g2 > 0, g2 / den, 0.0)
    return (lam + terms.sum(-1) + h).reshape(shape)


def ellipsoid_inside(
    c_in: np.ndarray, r_in: np.ndarray, c_out: np.ndarray, r_out: np.ndarray, margin: float = 1e-6
) -> np.ndarray:
    """True where ellipsoid A lies inside ellipsoid B with level ≤ 1 − margin everywhere; bool (...).

    Clear cases are decided by bounds on the level (centre outside B → no; dmax + 2|g| + h ≤ 1 →
    yes); the exact :func:`max_level` runs on the rest.
    """
    c_in, r_in, c_out, r_out = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (c_in, r_in, c_out, r_out))
    )
    shape = c_in.shape[:-1]
    c_in, r_in, c_out, r_out = (a.reshape(-1, 3) for a in (c_in, r_in, c_out, r_out))
    delta = c_in - c_out
    h = np.sum((delta / r_out) ** 2, axis=-1)
    upper = np.max((r_in / r_out) ** 2, axis=-1) + 2.0 * np.linalg.norm(delta * r_in / r_out**2, axis=-1) + h
    limit = 1.0 - margin
    out = upper <= limit
    # Necessary: the six axis-extreme points of A lie inside B.
    lvl = (delta / r_out) ** 2
    ext = h[:, None] - lvl + ((np.abs(delta) + r_in) / r_out) ** 2
    unsure = ~out & (h <= limit) & np.all(ext <= limit, axis=-1)
    if np.any(unsure):
        out[unsure] = max_level(c_in[unsure], r_in[unsure], c_out[unsure], r_out[unsure]) <= limit
    return out.reshape(shape)
