"""Matched backprojector and projector plan: exact transpose, explicit matrix, caching, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simaq_factory.tomo import Geometry, ProjectorPlan, adjoint_project, forward_project

GEOMETRIES = {
    "limited_astra": Geometry.arc_degrees(40, 100.0, step_deg=2.5),
    "unsorted_skimage": Geometry.from_degrees(
        40, np.random.default_rng(3).uniform(-90.0, 120.0, 29), center="skimage"
    ),
    "full_odd_n": Geometry.from_degrees(33, np.arange(0.0, 180.0, 6.0)),
    "off_grid_detector": Geometry.from_degrees(40, np.linspace(-60, 60, 17), det_count=50, det_spacing=1.3, center=18.2),
    "duplicates_and_axes": Geometry.from_degrees(32, [0.0, 90.0, 90.0, 180.0, -45.0, 45.0]),
}


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adjoint_identity(name: str, dtype: torch.dtype) -> None:
    """<A x, y> = <x, Aᵀ y> for random x, y (float32: summation rounding only)."""
    geom = GEOMETRIES[name]
    rng = np.random.default_rng(11)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for _ in range(2):
        x = torch.tensor(rng.standard_normal((3, geom.n, geom.n)), dtype=dtype)
        y = torch.tensor(rng.standard_normal((geom.n_angles, 3, geom.detectors)), dtype=dtype)
        ax, aty = forward_project(x, geom), adjoint_project(y, geom)
        assert aty.shape == x.shape and aty.dtype == dtype
        lhs, rhs = _dot(ax, y), _dot(x, aty)
        scale = float(ax.double().norm() * y.double().norm())
        assert abs(lhs - rhs) <= tol * scale, (lhs, rhs)


def test_adjoint_of_nonnegative_data_is_exact_scale() -> None:
    """Positive x, y: no cancellation, so the identity holds to ~1e-6 relative of the value itself."""
    geom = GEOMETRIES["limited_astra"]
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.random((2, geom.n, geom.n)), dtype=torch.float32)
    y = torch.tensor(rng.random((geom.n_angles, 2, geom.detectors)), dtype=torch.float32)
    lhs, rhs = _dot(forward_project(x, geom), y), _dot(x, adjoint_project(y, geom))
    assert abs(lhs - rhs) / abs(lhs) < 1e-6


def _explicit_matrix(geom: Geometry, pixels: np.ndarray) -> np.ndarray:
    """(A·D, P) float64 matrix of forward_project, one column per unit vector at ``pixels``."""
    unit = torch.zeros((len(pixels), geom.n * geom.n), dtype=torch.float64)
    unit[np.arange(len(pixels)), torch.as_tensor(pixels)] = 1.0
    proj = forward_project(unit.reshape(-1, geom.n, geom.n), geom)  # (A, P, D)
    return proj.permute(0, 2, 1).reshape(geom.n_angles * geom.detectors, len(pixels)).numpy()


@pytest.mark.parametrize("center", ["astra", "skimage"])
def test_adjoint_equals_explicit_transpose(center: str) -> None:
    geom = Geometry.from_degrees(16, np.random.default_rng(0).uniform(-70, 70, 11), center=center)
    mat = _explicit_matrix(geom, np.arange(256))
    rng = np.random.default_rng(1)
    y = rng.standard_normal((geom.n_angles, 2, geom.detectors))
    ref = (mat.T @ y.transpose(0, 2, 1).reshape(-1, 2)).T.reshape(2, 16, 16)
    out = adjoint_project(torch.tensor(y), geom).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    clipped = adjoint_project(torch.tensor(y), geom, clip_circle=True).numpy()
    yy, xx = np.mgrid[:16, :16]
    inside = (yy - geom.image_center) ** 2 + (xx - geom.image_center) ** 2 <= geom.circle_radius**2
    np.testing.assert_allclose(clipped[:, inside], ref[:, inside], rtol=1e-12, atol=1e-12)
    assert np.all(clipped[:, ~inside] == 0)


def test_plan_forward_is_forward_project_bitwise() -> None:
    geom = GEOMETRIES["unsorted_skimage"]
    vol = torch.rand(4, geom.n, geom.n, generator=torch.Generator().manual_seed(0))
    plan = ProjectorPlan(geom, dtype=torch.float32)
    assert torch.equal(plan.forward(vol), forward_project(vol, geom))
    circle = ProjectorPlan(geom, clip_circle=True)
    masked = circle.rows_to_volume(circle.volume_to_rows(vol))
    assert torch.equal(circle.forward(vol), forward_project(masked, geom))


def test_plan_takes_a_device_named_without_its_index() -> None:
    """ProjectorPlan(device='cuda') kept 'cuda' while its tensors said 'cuda:0', and every call was
    refused ('rows must be ... on cuda, got ... on cuda:0'); 'cpu:0' shows the same on a CPU."""
    geom = GEOMETRIES["limited_astra"]
    vol = torch.rand(2, geom.n, geom.n, generator=torch.Generator().manual_seed(1))
    plan = ProjectorPlan(geom, dtype=torch.float32, device="cpu:0")
    assert plan.device == torch.device("cpu")
    assert torch.equal(plan.forward(vol), forward_project(vol, geom))
    assert plan.adjoint(plan.forward(vol)).shape == vol.shape


def _cached_bytes(plan: ProjectorPlan) -> int:
    plan.adjoint(torch.zeros(plan.geom.n_angles, 1, plan.geom.detectors))  # builds and caches all it may
    return plan.cached_bytes


def test_plan_cache_bound_and_chunking() -> None:
    geom = Geometry.arc_degrees(24, 100.0, step_deg=5.0)
    rng = np.random.default_rng(4)
    vol = torch.tensor(rng.random((3, geom.n, geom.n)), dtype=torch.float32)
    y = torch.tensor(rng.random((geom.n_angles, 3, geom.detectors)), dtype=torch.float32)
    small = 150_000  # ~4 angles per chunk: 5 chunks, only some fit in the cache
    cached = ProjectorPlan(geom, max_chunk_bytes=small)
    partial = ProjectorPlan(geom, max_chunk_bytes=small, max_cache_bytes=_cached_bytes(cached) // 2)
    uncached = ProjectorPlan(geom, max_chunk_bytes=small, max_cache_bytes=0)
    ref_f, ref_b = cached.forward(vol), cached.adjoint(y)
    for plan in (cached, partial, uncached):
        for _ in range(2):  # first call builds, second reuses what was cached
            assert torch.equal(plan.forward(vol), ref_f) and torch.equal(plan.adjoint(y), ref_b)
    assert 0 < partial.cached_bytes < cached.cached_bytes and uncached.cached_bytes == 0
    # another chunk size changes the order of the adjoint's sums across chunks, not the values
    assert torch.allclose(adjoint_project(y, geom), ref_b, rtol=1e-5, atol=1e-5)
    assert torch.equal(adjoint_project(y, geom, max_chunk_bytes=small), ref_b)


def test_adjoint_thread_count_determinism() -> None:
    geom = Geometry.from_degrees(48, np.random.default_rng(5).uniform(-70, 70, 40))
    y = torch.rand(40, 6, 48, generator=torch.Generator().manual_seed(1))
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = adjoint_project(y, geom)
        torch.set_num_threads(2)
        b = adjoint_project(y, geom)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(a, b)


def test_plan_validation() -> None:
    geom = Geometry.from_degrees(16, [0.0, 90.0])
    with pytest.raises(ValueError, match="A=2"):
        adjoint_project(torch.zeros(3, 1, 16), geom)
    plan = ProjectorPlan(geom, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        plan.forward_rows(torch.zeros(plan.n_pixels, 1, dtype=torch.float32))
    with pytest.raises(ValueError, match="rows"):
        plan.adjoint_rows(torch.zeros(plan.n_rays + 1, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating"):
        ProjectorPlan(geom, dtype=torch.int32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:  # pragma: no cover - GPU only
    geom = GEOMETRIES["unsorted_skimage"]
    y = torch.rand(geom.n_angles, 3, geom.detectors, dtype=torch.float64)
    x = torch.rand(3, geom.n, geom.n, dtype=torch.float64)
    cpu = adjoint_project(y, geom)
    gpu = adjoint_project(y.cuda(), geom)
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-10, atol=1e-10)
    assert torch.equal(gpu, adjoint_project(y.cuda(), geom))  # run-to-run deterministic
    lhs, rhs = _dot(forward_project(x.cuda(), geom), y.cuda()), _dot(x.cuda(), gpu)
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
