"""ProjectorPlan (tomo/plan.py): geometries where some pixels are seen by no ray, the cache bound,
and the plan's own operators against an explicit matrix of forward_project."""

from __future__ import annotations

import numpy as np
import torch

from simaq_factory.tomo import Geometry, ProjectorPlan, adjoint_project, forward_project


def _explicit_matrix(geom: Geometry) -> np.ndarray:
    """(A·D, n·n) float64 matrix of forward_project, one column per pixel (flat y·n + x)."""
    n = geom.n
    unit = torch.eye(n * n, dtype=torch.float64).reshape(n * n, n, n)
    proj = forward_project(unit, geom)  # (A, n·n, D)
    return proj.permute(0, 2, 1).reshape(geom.n_angles * geom.detectors, n * n).numpy()


def _narrow_detector() -> Geometry:
    # 4 detector columns around the axis of a 20² image: the rays only cross a central band, so
    # the last pixels in flat order (the bottom rows, far corners) are seen by no ray at all
    return Geometry.from_degrees(20, [0.0, 10.0, 20.0], det_count=4)


def test_pixels_seen_by_no_ray_get_zero_from_the_exact_transpose() -> None:
    geom = _narrow_detector()
    mat = _explicit_matrix(geom)
    unseen = ~np.any(mat != 0, axis=0)
    assert unseen[-1] and unseen.sum() > geom.n  # the premise: the tail of the pixel list is unseen
    rng = np.random.default_rng(7)
    y = rng.standard_normal((geom.n_angles, 3, geom.detectors))
    ref = (mat.T @ y.transpose(0, 2, 1).reshape(-1, 3)).T.reshape(3, geom.n, geom.n)
    for clip in (False, True):
        out = adjoint_project(torch.tensor(y), geom, clip_circle=clip).numpy()
        assert out.shape == (3, geom.n, geom.n)
        if clip:
            yy, xx = np.mgrid[: geom.n, : geom.n]
            inside = (yy - geom.image_center) ** 2 + (xx - geom.image_center) ** 2 <= geom.circle_radius**2
            np.testing.assert_allclose(out[:, inside], ref[:, inside], rtol=1e-12, atol=1e-12)
            assert np.all(out[:, ~inside] == 0)
        else:
            np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        assert np.all(out.reshape(3, -1)[:, unseen] == 0)


def test_plan_rows_are_the_explicit_matrix_and_its_transpose() -> None:
    """forward_rows / adjoint_rows in the documented row layout equal M·x and Mᵀ·y (float64)."""
    geom = Geometry.from_degrees(12, [-50.0, -10.0, 35.0, 80.0], det_count=15, det_spacing=0.9)
    mat = _explicit_matrix(geom)
    for clip in (False, True):
        plan = ProjectorPlan(geom, dtype=torch.float64, clip_circle=clip, max_chunk_bytes=40_000)
        cols = mat[:, plan.pixels.numpy()]  # (A·D, P): only the support pixels are unknowns
        assert plan.n_pixels == cols.shape[1] and plan.n_rays == mat.shape[0]
        rng = np.random.default_rng(3)
        x = rng.standard_normal((plan.n_pixels, 2))
        y = rng.standard_normal((plan.n_rays, 2))
        np.testing.assert_allclose(plan.forward_rows(torch.tensor(x)).numpy(), cols @ x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(plan.adjoint_rows(torch.tensor(y)).numpy(), cols.T @ y, rtol=1e-12, atol=1e-12)


def test_a_cache_bound_equal_to_the_tables_keeps_them_all() -> None:
    """The cache bound is inclusive: a plan allowed exactly the bytes of all its tables keeps them all,
    one allowed a byte less does not, and cached chunks are always a prefix in angle order."""
    geom = Geometry.arc_degrees(24, 100.0, step_deg=5.0)
    small = 150_000  # several chunks of angles
    full = ProjectorPlan(geom, max_chunk_bytes=small)
    y = torch.rand(geom.n_angles, 2, geom.detectors, generator=torch.Generator().manual_seed(0))
    ref = full.adjoint(y)
    total = full.cached_bytes
    assert total > 0 and len(full._bounds) > 2
    exact = ProjectorPlan(geom, max_chunk_bytes=small, max_cache_bytes=total)
    less = ProjectorPlan(geom, max_chunk_bytes=small, max_cache_bytes=total - 1)
    # room for the chunks before some chunk j plus exactly a smaller later one: once chunk j has
    # not fitted, no later chunk is cached (the cache stays a prefix in angle order)
    sizes = [full._cache[i].nbytes for i in range(len(full._bounds))]
    j = next(j for j in range(len(sizes) - 1) if min(sizes[j + 1:]) < sizes[j])
    gap = ProjectorPlan(geom, max_chunk_bytes=small, max_cache_bytes=sum(sizes[:j]) + min(sizes[j + 1:]))
    for plan in (exact, less, gap):
        for _ in range(2):
            assert torch.equal(plan.adjoint(y), ref)
    assert exact.cached_bytes == total
    assert less.cached_bytes < total
    assert gap.cached_bytes == sum(sizes[:j])
    for plan in (full, exact, less, gap):
        assert sorted(plan._cache) == list(range(len(plan._cache)))  # a prefix of the chunks
