"""3D Apollonian sphere packing of the unit ball in 5D special coordinates (reference §1.5).

A sphere is a 5-vector w = (a, b, c, d, e) of coefficients over a base Descartes configuration of
five mutually tangent spheres: the enclosing unit sphere (curvature −1) and four equal spheres of
radius √6 − 2 inside it. The Cartesian sphere follows from the inversive coordinates

    X = (−b + c + d − e)·√2/2,  Y = (b − c + d − e)·√2/2,  Z = (b + c − d − e)·√2/2,
    W = a − b − c − d − e,      V = (b + c + d + e)·√6/2,
    curvature κ = V − W,  radius 1/κ,  centre (X, Y, Z)/κ.

One generation applies, to every sphere of the previous generation and every index i, the
reflection Sᵢ: wᵢ → −wᵢ, w_j → w_j + wᵢ (j ≠ i), keeping children that are strictly smaller than
their parent; duplicates are removed by their rounded (centre, radius). Depth 0 gives the 4 inner
base spheres, depth 1 adds 5 (9 in all, the reference's table), depth 2 adds 20 (29).
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["apollonian_packing"]

_S2 = math.sqrt(2.0) / 2.0
_S6 = math.sqrt(6.0) / 2.0


def _to_cartesian(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 5) special coordinates → centres (N, 3) and signed radii (N,)."""
    a, b, c, d, e = w.T
    x = (-b + c + d - e) * _S2
    y = (b - c + d - e) * _S2
    z = (b + c - d - e) * _S2
    kappa = (b + c + d + e) * _S6 - (a - b - c - d - e)
    return np.stack([x, y, z], axis=-1) / kappa[:, None], 1.0 / kappa


def _curvature(w: np.ndarray) -> np.ndarray:
    a, b, c, d, e = w.T
    return (b + c + d + e) * _S6 - (a - b - c - d - e)


@functools.lru_cache(maxsize=8)
def _packing(depth: int) -> tuple[np.ndarray, np.ndarray]:
    base = np.eye(5)
    spheres = [base]
    generation = base
    for _ in range(depth):
        children = []
        for i in range(5):
            child = generation + generation[:, i : i + 1]
            child[:, i] = -generation[:, i]
            keep = _curvature(child) > _curvature(generation) + 1e-9
            children.append(child[keep])
        generation = np.concatenate(children, axis=0)
        centres, radii = _to_cartesian(generation)
        key = np.round(np.concatenate([centres, radii[:, None]], axis=1), 9)
        _, first = np.unique(key, axis=0, return_index=True)
        generation = generation[np.sort(first)]
        spheres.append(generation)
    centres, radii = _to_cartesian(np.concatenate(spheres, axis=0))
    inner = radii > 0
    return centres[inner], radii[inner]


def apollonian_packing(depth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Spheres of the Apollonian packing of the unit ball after ``depth`` generations.

    Returns (centres (N, 3) float64, radii (N,) float64): N = 4, 9, 29 for depth 0, 1, 2.
    Spheres are mutually tangent or disjoint and lie inside the unit sphere (tangent to it or not).
    Copies are returned, so callers may modify them.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    centres, radii = _packing(int(depth))
    return centres.copy(), radii.copy()
