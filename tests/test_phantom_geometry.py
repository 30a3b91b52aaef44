"""Geometric primitives of the phantom stage: overlap, containment, Apollonian packing, layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simaq_factory.phantom.apollonian import apollonian_packing
from simaq_factory.phantom.config import LayoutConfig
from simaq_factory.phantom.geometry import (
    ellipsoid_inside,
    ellipsoids_overlap,
    fibonacci_sphere,
    max_level,
)
from simaq_factory.phantom.layout import PhantomLayoutError, layout_discs, layout_loss, min_clearance


def _random_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    return (
        rng.uniform(-3, 3, (n, 3)),
        rng.uniform(0.3, 2, (n, 3)),
        rng.uniform(-3, 3, (n, 3)),
        rng.uniform(0.3, 2, (n, 3)),
    )


def test_sphere_overlap_matches_distance_rule() -> None:
    rng = np.random.default_rng(0)
    c1, c2 = rng.uniform(-3, 3, (2000, 3)), rng.uniform(-3, 3, (2000, 3))
    r1, r2 = rng.uniform(0.2, 2, 2000), rng.uniform(0.2, 2, 2000)
    got = ellipsoids_overlap(c1, np.repeat(r1[:, None], 3, 1), c2, np.repeat(r2[:, None], 3, 1))
    d = np.linalg.norm(c1 - c2, axis=1)
    clear = np.abs(d - (r1 + r2)) > 1e-9
    np.testing.assert_array_equal(got[clear], (d <= r1 + r2)[clear])


def test_ellipsoid_overlap_agrees_with_dense_sampling() -> None:
    rng = np.random.default_rng(1)
    c1, r1, c2, r2 = _random_pairs(rng, 400)
    got = ellipsoids_overlap(c1, r1, c2, r2)
    pts = fibonacci_sphere(4000)[:, None, :] * np.linspace(0, 1, 25)[None, :, None]
    pts = pts.reshape(-1, 3)
    for i in range(len(c1)):
        level = np.min(np.sum(((c1[i] + r1[i] * pts - c2[i]) / r2[i]) ** 2, axis=1))
        if level < 0.999:  # a sampled point of A inside B → they overlap, the test must agree
            assert got[i], i
        # (the converse is not checkable by sampling: tiny overlaps are missed)


def test_overlap_edge_cases() -> None:
    one = np.ones(3)
    assert ellipsoids_overlap(np.zeros(3), one, np.zeros(3), 2 * one)  # coincident centres
    assert ellipsoids_overlap(np.zeros(3), one, np.array([2.0, 0, 0]), one)  # touching
    assert not ellipsoids_overlap(np.zeros(3), one, np.array([2.0 + 1e-6, 0, 0]), one)
    assert not ellipsoids_overlap(np.zeros(3), np.array([1.0, 5, 5]), np.array([2.0, 0, 0]), np.array([0.99, 5, 5]))


@pytest.mark.parametrize("spread", [0.0, 1e-3, 0.2, 1.0])
def test_max_level_is_a_tight_upper_bound(spread: float) -> None:
    rng = np.random.default_rng(2)
    c1, r1, c2, r2 = _random_pairs(rng, 300)
    got = max_level(c1 * spread, r1 * 0.5, c2 * spread * 0.5, r2 * 2)
    surf = fibonacci_sphere(20000)
    for i in range(len(c1)):
        brute = np.max(np.sum(((c1[i] * spread + r1[i] * 0.5 * surf - c2[i] * spread * 0.5) / (r2[i] * 2)) ** 2, axis=1))
        assert got[i] >= brute * (1 - 1e-12)
        assert got[i] <= brute * (1 + 1e-3)


def test_max_level_closed_forms() -> None:
    # Concentric: the largest axis ratio squared; hard case (centre offset ⟂ longest axis).
    assert max_level(np.zeros(3), np.array([1.0, 2, 3]), np.zeros(3), np.full(3, 4.0)) == pytest.approx(9 / 16)
    hard = max_level(np.array([0.5, 0, 0]), np.array([1.0, 1, 3]), np.zeros(3), np.full(3, 4.0))
    assert hard == pytest.approx(9 / 16 + 1 / 512 + 1 / 64, rel=1e-7)
    assert ellipsoid_inside(np.zeros(3), np.full(3, 0.999), np.zeros(3), np.ones(3))
    assert not ellipsoid_inside(np.zeros(3), np.full(3, 1.0), np.zeros(3), np.ones(3))
    assert not ellipsoid_inside(np.array([0.0, 0, 0.5]), np.full(3, 0.51), np.zeros(3), np.ones(3))


@pytest.mark.parametrize("depth, count", [(0, 4), (1, 9), (2, 29), (3, 89)])
def test_apollonian_packing_is_a_packing(depth: int, count: int) -> None:
    c, r = apollonian_packing(depth)
    assert len(r) == count and np.all(r > 0)
    assert np.all(np.linalg.norm(c, axis=1) + r <= 1 + 1e-12)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    iu = np.triu_indices(count, 1)
    gaps = d[iu] - (r[:, None] + r[None])[iu]
    assert gaps.min() >= -1e-12  # pairwise disjoint or tangent
    # Every sphere is tangent to at least three others (or to the bounding sphere).
    tangent = np.abs(d - (r[:, None] + r[None])) < 1e-9
    np.fill_diagonal(tangent, False)
    assert np.all(tangent.sum(1) >= 3)


def test_apollonian_depth1_matches_reference_table() -> None:
    c, r = apollonian_packing(1)
    order = np.argsort(-r)
    r, c = r[order], c[order]
    np.testing.assert_allclose(r[:4], math.sqrt(6) - 2, rtol=1e-12)
    np.testing.assert_allclose(r[4:8], 0.289898, atol=1e-6)
    np.testing.assert_allclose(r[8], 5 - 2 * math.sqrt(6), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(c[:4], axis=1), 0.550510, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(c[4:8], axis=1), 0.710102, atol=1e-6)
    np.testing.assert_allclose(c[8], 0, atol=1e-12)
    assert np.sum(r**3) == pytest.approx(0.461745, abs=1e-6)
    # Large spheres have an odd number of negative coordinates, medium ones an even number.
    assert np.all(np.sum(c[:4] < 0, axis=1) % 2 == 1)
    assert np.all(np.sum(c[4:8] < 0, axis=1) % 2 == 0)


def test_layout_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    cfg = LayoutConfig()
    pos, rho = rng.normal(0, 10, (5, 2)), rng.uniform(40, 60, 5)
    _, grad, _ = layout_loss(pos, rho, cfg)
    num = np.zeros_like(pos)
    for i in range(5):
        for k in range(2):
            e = np.zeros_like(pos)
            e[i, k] = 1e-6
            num[i, k] = (layout_loss(pos + e, rho, cfg)[0] - layout_loss(pos - e, rho, cfg)[0]) / 2e-6
    np.testing.assert_allclose(grad, num, atol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_layout_never_overlaps(n: int) -> None:
    cfg = LayoutConfig()
    for seed in range(15):
        rng = np.random.default_rng(seed)
        rho = rng.uniform(41, 62, n)
        pos = layout_discs(rho, cfg, rng)
        assert pos.shape == (n, 2)
        assert min_clearance(pos, rho) >= 0.5 * cfg.gap_eps


def test_layout_coincident_starts_and_failure() -> None:
    rho = np.full(4, 50.0)
    pos = layout_discs(rho, LayoutConfig(init_std=0.0), np.random.default_rng(0))
    assert min_clearance(pos, rho) > 0
    with pytest.raises(PhantomLayoutError):
        layout_discs(rho, LayoutConfig(max_iter=3, max_restarts=1), np.random.default_rng(0))
