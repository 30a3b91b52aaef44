"""Filters and FBP: scikit-image iradon oracle, filter shapes, weighting, config, determinism."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from simaq_factory.tomo import (
    FILTER_NAMES,
    Geometry,
    ReconstructionConfig,
    fbp,
    filter_projections,
    forward_project,
    fourier_filter,
    padded_size,
    reconstruct,
    skimage_padded_size,
)

skimage_transform = pytest.importorskip("skimage.transform")

N = 64
SKIMAGE_NAMES = {
    "ram-lak": "ramp",
    "shepp-logan": "shepp-logan",
    "cosine": "cosine",
    "hamming": "hamming",
    "hann": "hann",
}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _sinogram(theta: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:N, :N]
    img = rng.random((N, N)) + ((yy - 30) ** 2 + (xx - 36) ** 2 < 100)
    img[(yy - N // 2) ** 2 + (xx - N // 2) ** 2 > (N // 2 - 2) ** 2] = 0.0
    return skimage_transform.radon(img, theta, circle=True)  # (D, A)


@pytest.mark.parametrize("name", sorted(SKIMAGE_NAMES))
@pytest.mark.parametrize("arc", ["full", "limited"])
def test_matches_skimage_iradon(name: str, arc: str) -> None:
    theta = np.arange(180.0) if arc == "full" else np.arange(-60.0, 60.0, 1.5)
    sino = _sinogram(theta)
    ref = skimage_transform.iradon(
        sino, theta, filter_name=SKIMAGE_NAMES[name], interpolation="linear", circle=True
    )
    geom = Geometry.from_degrees(N, theta, center="skimage", weighting="pi_over_2A")
    proj = torch.tensor(sino.T[:, None, :], dtype=torch.float32)
    out = fbp(proj, geom, filter=name, pad_to=skimage_padded_size(N))
    assert out.shape == (1, N, N) and out.dtype == torch.float32
    assert _rel(out[0].numpy(), ref) <= 1e-4


def test_default_padding_is_reference() -> None:
    assert padded_size(512) == 1024 and padded_size(10) == 64 and padded_size(64) == 128
    assert skimage_padded_size(64) == 256
    # The ramp does not depend on the padding (P >= 2D); windows do only slightly.
    p = torch.tensor(np.random.default_rng(0).random((3, 2, 40)))
    a = filter_projections(p, "ram-lak")
    b = filter_projections(p, "ram-lak", pad_to=256)
    assert torch.allclose(a, b, atol=1e-12)


def test_filter_shapes() -> None:
    size = 1024
    ramp = fourier_filter("ram-lak", size)
    assert ramp.shape == (513,)
    assert 0 < ramp[0] < 0.01  # built in the spatial domain: small positive DC, no hole
    assert math.isclose(ramp[-1], 1.0, rel_tol=1e-3)
    assert np.all(np.diff(ramp) > 0)
    for name in ("hamming", "hann", "cosine", "shepp-logan"):
        h = fourier_filter(name, size)
        window = h[1:] / ramp[1:]
        assert window[0] > 0.99, name  # ~1 near DC
        assert np.all(np.diff(window) <= 1e-12), name  # monotone taper towards Nyquist
        assert np.all(h <= ramp + 1e-15), name
    ham = fourier_filter("hamming", size)
    assert math.isclose(ham[-1] / ramp[-1], 0.08, abs_tol=1e-3)
    assert math.isclose(ham[64] / ramp[64], 0.54 + 0.46 * math.cos(2 * math.pi * 64 / size), rel_tol=2e-3)
    # The reference's unshifted window (a bug, kept for reproduction): 0.08 near DC, 1 at Nyquist.
    legacy = fourier_filter("hamming_legacy_unshifted", size)
    assert math.isclose(legacy[-1], ramp[-1], rel_tol=1e-12)
    assert math.isclose(legacy[64] / ramp[64], 0.54 - 0.46 * math.cos(2 * math.pi * 64 / size), rel_tol=1e-9)
    assert legacy[64] < 0.2 * ham[64]
    assert set(FILTER_NAMES) == set(SKIMAGE_NAMES) | {"hamming_legacy_unshifted"}
    with pytest.raises(ValueError, match="unknown FBP filter"):
        fourier_filter("butterworth", 64)


def _disk(n: int, c: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (((yy - c) ** 2 + (xx - c - 5) ** 2) <= r * r).astype(np.float64)


def test_roundtrip_recovers_values() -> None:
    geom = Geometry.from_degrees(N, np.arange(0.0, 180.0, 1.0))
    img = _disk(N, geom.image_center, 12.0) * 2.0
    vol = torch.tensor(img[None], dtype=torch.float32)
    rec = fbp(forward_project(vol, geom), geom, filter="ram-lak")[0].numpy()
    inner = _disk(N, geom.image_center, 9.0) > 0
    assert abs(rec[inner].mean() - 2.0) < 0.02
    far = (np.hypot(*(np.mgrid[:N, :N] - geom.image_center)) < 28) & (_disk(N, geom.image_center, 15.0) == 0)
    assert abs(rec[far].mean()) < 0.02
    assert np.all(rec[np.hypot(*(np.mgrid[:N, :N] - geom.image_center)) > N // 2] == 0)


@pytest.mark.parametrize("spacing", [0.5, 2.0])
def test_roundtrip_with_a_finer_or_coarser_detector(spacing: float) -> None:
    """The ramp is divided by det_spacing, so values stay per voxel length: a detector of pitch
    ``spacing`` covering the same field of view recovers the disc's value like pitch 1 does."""
    theta = np.arange(0.0, 180.0, 1.0)
    geom = Geometry.from_degrees(N, theta)
    fine = Geometry.from_degrees(N, theta, det_count=int(round(N / spacing)), det_spacing=spacing)
    img = _disk(N, geom.image_center, 12.0) * 2.0
    vol = torch.tensor(img[None], dtype=torch.float32)
    rec1 = fbp(forward_project(vol, geom), geom, filter="ram-lak")[0].numpy()
    rec = fbp(forward_project(vol, fine), fine, filter="ram-lak")[0].numpy()
    inner = _disk(N, geom.image_center, 9.0) > 0
    assert abs(rec[inner].mean() - 2.0) < 0.02
    far = (np.hypot(*(np.mgrid[:N, :N] - geom.image_center)) < 28) & (_disk(N, geom.image_center, 15.0) == 0)
    assert abs(rec[far].mean()) < 0.02
    assert _rel(rec, rec1) < 0.15  # 0.06 at pitch 0.5, 0.11 at 2 (the coarser sampling blurs the edge)


def test_quadrature_weighting_limited_arc() -> None:
    g_full = Geometry.arc_degrees(N, 180.0)
    g_arc = Geometry.arc_degrees(N, 120.0, weighting="quadrature")
    w_full = dataclasses.replace(g_full, weighting="quadrature").angle_weights()
    np.testing.assert_allclose(w_full, g_full.angle_weights(), rtol=1e-12)  # uniform 180°: identical
    w_arc = g_arc.angle_weights()
    np.testing.assert_allclose(w_arc, math.radians(1.0) / 2, rtol=1e-9)  # ends included
    assert math.isclose(w_arc.sum(), math.radians(120.0) / 2, rel_tol=1e-9)
    assert math.isclose(dataclasses.replace(g_arc, weighting="pi_over_2A").angle_weights().sum(), math.pi / 2)
    # missing projections inside the arc: neighbours of a 2° gap cover it
    keep = [a for i, a in enumerate(g_arc.angles) if i != 50]
    w = dataclasses.replace(g_arc, angles=tuple(keep)).angle_weights()
    assert math.isclose(w.sum(), math.radians(120.0) / 2, rel_tol=1e-9)
    assert math.isclose(w[49], math.radians(1.5) / 2, rel_tol=1e-9)
    # three in a row (a 4° gap, over 3× the median) is still a gap inside the arc, not a wedge
    keep3 = [a for i, a in enumerate(g_arc.angles) if i not in (50, 51, 52)]
    w3 = dataclasses.replace(g_arc, angles=tuple(keep3)).angle_weights()
    assert math.isclose(w3.sum(), math.radians(120.0) / 2, rel_tol=1e-9)
    assert math.isclose(w3[49], math.radians(2.5) / 2, rel_tol=1e-9) and math.isclose(w3[50], w3[49])
    # order does not matter
    perm = np.random.default_rng(0).permutation(len(keep))
    w_perm = dataclasses.replace(g_arc, angles=tuple(np.asarray(keep)[perm])).angle_weights()
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-12)


def test_quadrature_fbp_scales_limited_arc() -> None:
    geom = Geometry.arc_degrees(N, 120.0)
    proj = torch.rand(geom.n_angles, 2, N, dtype=torch.float64)
    a = fbp(proj, geom)
    b = fbp(proj, dataclasses.replace(geom, weighting="quadrature"))
    assert torch.allclose(b, a * (120.0 / 180.0), rtol=1e-10, atol=1e-12)


def test_reconstruction_config_and_reconstruct() -> None:
    cfg = ReconstructionConfig()
    assert (cfg.method, cfg.filter, cfg.weighting, cfg.center, cfg.clip_circle) == (
        "fbp",
        "hamming",
        "pi_over_2A",
        "astra",
        True,
    )
    for f in dataclasses.fields(ReconstructionConfig):
        assert f.metadata["doc"], f.name
    geom = Geometry.arc_degrees(32, 100.0)
    proj = torch.rand(geom.n_angles, 3, 32)
    out = reconstruct(proj, geom, cfg)
    assert torch.equal(out, fbp(proj, geom, filter="hamming", clip_circle=True))
    quad = reconstruct(proj, geom, ReconstructionConfig(weighting="quadrature", clip_circle=False))
    ref = fbp(proj, dataclasses.replace(geom, weighting="quadrature"), filter="hamming", clip_circle=False)
    assert torch.equal(quad, ref)
    with pytest.raises(ValueError, match="centre"):
        reconstruct(proj, geom, ReconstructionConfig(center="skimage"))


def test_fbp_thread_count_determinism() -> None:
    rng = np.random.default_rng(4)
    geom = Geometry.from_degrees(48, rng.uniform(-60, 60, 50))
    proj = torch.tensor(rng.random((50, 6, 48)), dtype=torch.float32)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = fbp(proj, geom, filter="hamming")
        torch.set_num_threads(2)
        b = fbp(proj, geom, filter="hamming")
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(a, b)


def test_fbp_validation() -> None:
    geom = Geometry.from_degrees(16, [0.0, 90.0])
    with pytest.raises(ValueError, match="A=2"):
        fbp(torch.zeros(3, 1, 16), geom)
    with pytest.raises(ValueError, match="unknown FBP filter"):
        fbp(torch.zeros(2, 1, 16), geom, filter="butterworth")


@pytest.mark.parametrize("name", sorted(SKIMAGE_NAMES))
def test_every_filter_and_weighting_via_config(name: str) -> None:
    """Issue item 7: each filter × both weightings through reconstruct(); output clipped to the circle."""
    geom = Geometry.arc_degrees(N, 120.0, step_deg=2.0)
    img = _disk(N, geom.image_center, 14.0)
    proj = forward_project(torch.tensor(img[None], dtype=torch.float32), geom)
    out = {
        w: reconstruct(proj, geom, ReconstructionConfig(filter=name, weighting=w))[0].numpy()  # type: ignore[arg-type]
        for w in ("pi_over_2A", "quadrature")
    }
    r = np.hypot(*(np.mgrid[:N, :N] - geom.image_center))
    for rec in out.values():
        assert np.all(rec[r > geom.circle_radius] == 0) and np.any(rec[r <= geom.circle_radius] != 0)
    # pi/(2A) assumes 180°: on a 120° arc it is 1.5× the quadrature result, for every filter
    np.testing.assert_allclose(out["pi_over_2A"], 1.5 * out["quadrature"], rtol=1e-4, atol=1e-5)
    # an isotropic disk loses the same share of its spectrum to the wedge everywhere: pi/(2A) restores
    # its value (the quadrature result is span/180° of it)
    assert abs(out["pi_over_2A"][r < 8].mean() - 1.0) < 0.05


def test_fbp_bytes_do_not_depend_on_the_thread_count() -> None:
    """The CPU FFT's result depends on its thread count at some lengths (64 here): FBP runs it on one
    thread, so a build's recon is the same bytes whatever its workers' thread counts."""
    from simaq_factory.tomo import forward_project

    g = Geometry.arc_degrees(32, 100.0)
    proj = forward_project(torch.rand(32, 32, 32, generator=torch.Generator().manual_seed(0)), g)
    before = torch.get_num_threads()
    out = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out[t] = fbp(proj, g, filter="hamming")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[1], out[2])
    assert torch.get_num_threads() == before
