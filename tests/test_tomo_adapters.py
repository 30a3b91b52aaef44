"""Optional ASTRA / torch-radon adapters: same conventions as our projector and FBP (skipped when absent)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from simaq_factory.tomo import Geometry, fbp, forward_project
from simaq_factory.tomo.adapters import (
    BackendUnavailable,
    astra_fbp,
    astra_forward,
    torch_radon_available,
    torch_radon_fbp,
    torch_radon_forward,
)

N = 48


def rel(a, b) -> float:  # type: ignore[no-untyped-def]
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    """(2, N, N): an asymmetric scene (two disks and a bar) and its transpose."""
    yy, xx = np.mgrid[:N, :N]
    img = 1.0 * ((yy - 15) ** 2 + (xx - 30) ** 2 < 6**2) + 0.5 * ((yy - 30) ** 2 + (xx - 17) ** 2 < 4**2)
    img[8:12, 8:16] += 0.7
    return torch.from_numpy(np.stack([img, img.T]).astype(np.float32))


def test_missing_backends_raise_a_clear_import_error(monkeypatch, volume):
    monkeypatch.setitem(sys.modules, "astra", None)  # makes `import astra` fail
    geom = Geometry.arc_degrees(N, 180)
    with pytest.raises(BackendUnavailable, match="astra-toolbox"):
        astra_forward(volume, geom)
    with pytest.raises(ImportError):
        astra_fbp(torch.zeros(geom.n_angles, 1, N), geom)
    monkeypatch.setitem(sys.modules, "torch_radon", None)
    assert not torch_radon_available()
    with pytest.raises(BackendUnavailable, match="torch-radon"):
        torch_radon_forward(volume, geom)


@pytest.mark.parametrize("center", ["astra", "skimage"])
@pytest.mark.parametrize("span,spacing,det", [(180, 1.0, None), (110, 1.0, N + 7), (100, 0.5, 2 * N)])
def test_astra_forward_matches_ours(volume, center, span, spacing, det):
    pytest.importorskip("astra")
    geom = Geometry.arc_degrees(N, span, 1.0, offset_deg=7.0, center=center, det_spacing=spacing,
                                det_count=det)
    ours = forward_project(volume, geom)
    theirs = astra_forward(volume, geom)
    assert isinstance(theirs, torch.Tensor) and theirs.shape == ours.shape and theirs.dtype == ours.dtype
    assert rel(theirs, ours) < 0.015  # Joseph vs our unit-step bilinear rays
    # the conventions are pinned: a mirrored detector or negated angles are far off
    assert rel(theirs.flip(-1), ours) > 0.3
    negated = Geometry(n=N, angles=tuple(-a for a in geom.angles), center=center, det_spacing=spacing,
                       det_count=det)
    assert rel(astra_forward(volume, negated), ours) > 0.3
    assert rel(astra_forward(volume.numpy(), geom, projector="strip"), ours) < 0.02


@pytest.mark.parametrize("center", ["astra", "skimage"])
@pytest.mark.parametrize("weighting", ["pi_over_2A", "quadrature"])
@pytest.mark.parametrize("filt", ["ram-lak", "hamming"])
def test_astra_fbp_matches_ours(volume, center, weighting, filt):
    pytest.importorskip("astra")
    geom = Geometry.arc_degrees(N, 120, 1.0, offset_deg=-5.0, center=center, weighting=weighting)
    proj = forward_project(volume, geom)
    ours = fbp(proj, geom, filter=filt)
    theirs = astra_fbp(proj.numpy(), geom, filt)
    assert isinstance(theirs, np.ndarray) and theirs.shape == (2, N, N) and theirs.dtype == np.float32
    # the ramp differs slightly at the lowest frequencies (frequency- vs spatial-domain design)
    assert rel(theirs, ours) < 0.05
    scale = float((theirs * ours.numpy()).sum() / (ours.numpy() ** 2).sum())
    assert scale == pytest.approx(1.0, abs=0.02)  # same weighting, same units
    outside = np.hypot(*np.meshgrid(np.arange(N) - geom.image_center, np.arange(N) - geom.image_center)) > N // 2
    assert np.all(theirs[:, outside] == 0)


def test_astra_rejects_unknown_filters_and_bad_shapes(volume):
    pytest.importorskip("astra")
    geom = Geometry.arc_degrees(N, 90)
    with pytest.raises(ValueError, match="filter"):
        astra_fbp(forward_project(volume, geom), geom, "hamming_legacy_unshifted")
    with pytest.raises(ValueError, match="projections"):
        astra_fbp(torch.zeros(3, 2, N), geom)
    with pytest.raises(ValueError, match="volume"):
        astra_forward(volume[0], geom)
    odd = Geometry.arc_degrees(N, 90, center=float(N / 2 - 0.25))
    with pytest.raises(ValueError, match="half detector column"):
        astra_forward(volume, odd)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch-radon needs CUDA")
def test_torch_radon_matches_ours(volume):
    pytest.importorskip("torch_radon")
    geom = Geometry.arc_degrees(N, 120, 1.0)
    vol = volume.cuda()
    ours = forward_project(vol, geom)
    assert rel(torch_radon_forward(vol, geom).cpu(), ours.cpu()) < 0.02
    assert rel(torch_radon_fbp(ours, geom).cpu(), fbp(ours, geom).cpu()) < 0.05
    with pytest.raises(ValueError, match="astra"):
        torch_radon_forward(vol, Geometry.arc_degrees(N, 120, center="skimage"))
