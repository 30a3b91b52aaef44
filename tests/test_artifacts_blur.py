"""Gaussian volume blur (reference §2.2, bug 12): mass, width, oracle, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from simaq_factory.artifacts.blur import gaussian_blur_3d, gaussian_kernel_1d, kernel_radius


def _rand_volume(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, n + 2, n + 4), generator=g)


def test_kernel_radius_follows_sigma_and_legacy_size() -> None:
    assert kernel_radius(1.0, 3.0, None) == 3
    assert kernel_radius(5.0, 3.0, None) == 15
    assert kernel_radius(2.2, 3.0, None) == 7
    assert kernel_radius(5.0, 3.0, 5) == 2  # the reference's fixed 5³ kernel


def test_matches_scipy_gaussian_filter_with_replicate_padding() -> None:
    vol = _rand_volume(20)
    for sigma, radius in [(1.0, 3), (2.5, 8), (5.0, 2)]:
        ours = gaussian_blur_3d(vol, sigma, radius).numpy()
        ref = ndi.gaussian_filter(vol.numpy().astype(np.float64), sigma, mode="nearest", radius=radius)
        np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_preserves_mass_in_interior() -> None:
    n, r = 48, 9
    vol = torch.zeros((n, n, n))
    vol[r + 1 : n - r - 1, r + 1 : n - r - 1, r + 1 : n - r - 1] = _rand_volume(n - 2 * r - 2)[
        :, : n - 2 * r - 2, : n - 2 * r - 2
    ]
    out = gaussian_blur_3d(vol, 3.0, r)
    assert out.double().sum().item() == pytest.approx(vol.double().sum().item(), rel=1e-5)
    assert out.shape == vol.shape and out.dtype == torch.float32


@pytest.mark.parametrize("sigma", [1.0, 2.0, 4.0])
def test_impulse_width_follows_sigma(sigma: float) -> None:
    n = 64
    vol = torch.zeros((n, n, n))
    c = n // 2
    vol[c, c, c] = 1.0
    radius = kernel_radius(sigma, 3.0, None)
    out = gaussian_blur_3d(vol, sigma, radius).double()
    x = torch.arange(n, dtype=torch.float64) - c
    k = gaussian_kernel_1d(sigma, radius, torch.device("cpu"))
    expected_var = float((k * torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2).sum())
    assert expected_var == pytest.approx(sigma**2, rel=0.03)  # truncation at 3σ loses < 3 %
    for axis in range(3):
        marginal = out.sum(dim=tuple(a for a in range(3) if a != axis))
        var = float((marginal * x**2).sum() / marginal.sum())
        assert var == pytest.approx(expected_var, rel=1e-4, abs=1e-6)


def test_legacy_kernel_caps_the_width() -> None:
    """With the fixed 5³ kernel σ=5 blurs with std ≈ 1.39 voxels only (reference §2.2)."""
    n = 32
    vol = torch.zeros((n, n, n))
    vol[16, 16, 16] = 1.0
    out = gaussian_blur_3d(vol, 5.0, kernel_radius(5.0, 3.0, 5)).double()
    marginal = out.sum(dim=(1, 2))
    x = torch.arange(n, dtype=torch.float64) - 16
    std = float(((marginal * x**2).sum() / marginal.sum()).sqrt())
    assert std == pytest.approx(1.39, abs=0.01)


def test_bitwise_deterministic_across_thread_counts() -> None:
    vol = _rand_volume(40, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = gaussian_blur_3d(vol, 2.7, 9)
        torch.set_num_threads(2)
        b = gaussian_blur_3d(vol, 2.7, 9)
    finally:
        torch.set_num_threads(before)
    assert a.numpy().tobytes() == b.numpy().tobytes()


def _whole_volume_blur(vol: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """The separable passes over the whole volume, without the support box (the plain algorithm)."""
    from simaq_factory.artifacts.blur import _blur_axis

    k = [float(v) for v in gaussian_kernel_1d(sigma, radius, torch.device("cpu"))]
    out = vol
    for dim in (2, 1, 0):
        out = _blur_axis(out, k, dim)
    return out


@pytest.mark.parametrize(
    "box",
    [
        (slice(5, 12), slice(20, 26), slice(3, 9)),  # interior: zero padding on every side
        (slice(0, 4), slice(0, 30), slice(30, 36)),  # touching borders: replicate there
        (slice(17, 18), slice(2, 3), slice(35, 36)),  # one voxel near the border, radius > margin
    ],
)
def test_sparse_volume_blurs_only_its_support_with_the_same_bytes(box: tuple[slice, ...]) -> None:
    from simaq_factory.artifacts.blur import support_box

    vol = torch.zeros((18, 30, 36))
    vol[box] = 0.1 + torch.rand(vol[box].shape, generator=torch.Generator().manual_seed(4))
    r = 4
    grown = support_box(vol, r)
    assert grown is not None
    for got, want, n in zip(grown, box, vol.shape):
        assert (got.start, got.stop) == (max(0, want.start - r), min(n, want.stop + r))
    ours = gaussian_blur_3d(vol, 1.3, r)
    assert ours.numpy().tobytes() == _whole_volume_blur(vol, 1.3, r).numpy().tobytes()
    ref = ndi.gaussian_filter(vol.numpy().astype(np.float64), 1.3, mode="nearest", radius=r)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-6)
    assert support_box(torch.zeros((4, 4, 4)), 2) is None
    assert not gaussian_blur_3d(torch.zeros((6, 5, 4)), 1.0, 2).any()


@pytest.mark.parametrize("sigma", [0.12, 0.17, 0.3, 0.48, 0.7, 1.0, 2.5])
def test_discrete_kernel_applies_its_sigma_below_a_voxel_too(sigma: float) -> None:
    """The volume blur's kernel keeps σ² (less the cut at 3σ) where a sampled Gaussian collapses:
    at σ = 0.17 (a reference blur at 64³) the sampled kernel is a delta (std 0.0002)."""
    from simaq_factory.artifacts.blur import discrete_gaussian_kernel_1d, kernel_std

    radius = max(2, kernel_radius(sigma, 3.0, None))  # as the stage sizes it
    k = discrete_gaussian_kernel_1d(sigma, radius)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-15) and torch.equal(k, k.flip(0))
    assert kernel_std(k) == pytest.approx(sigma, rel=0.02)  # the cut at ceil(3σ) loses < 2 % of σ
    uncut = discrete_gaussian_kernel_1d(sigma, 40)
    assert kernel_std(uncut) == pytest.approx(sigma, rel=1e-9)  # exact before the cut
    if sigma < 0.3:
        assert kernel_std(gaussian_kernel_1d(sigma, radius, torch.device("cpu"))) < 0.5 * sigma
    # applied to an impulse: the same spread along every axis
    n = 17
    vol = torch.zeros((n, n, n))
    vol[8, 8, 8] = 1.0
    out = gaussian_blur_3d(vol, sigma, radius, kernel="discrete").double()
    x = torch.arange(n, dtype=torch.float64) - 8
    for axis in range(3):
        marginal = out.sum(dim=tuple(a for a in range(3) if a != axis))
        assert float((marginal * x**2).sum().sqrt()) == pytest.approx(kernel_std(k), rel=1e-5)
