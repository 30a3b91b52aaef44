"""Fiducial beads (reference §2.3, bug 11): background only, never on cells, counts and radii."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from simaq_factory.artifacts.config import FiducialsConfig
from simaq_factory.artifacts.fiducials import paint_beads, sample_fiducials
from simaq_factory.recipe.fields import Dist


def _two_cells(n: int = 48) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.arange(n),) * 3, indexing="ij")
    labels = torch.zeros((n, n, n), dtype=torch.uint8)
    labels[((z - 20) ** 2 + (y - 20) ** 2 + (x - 18) ** 2) < 12**2] = 1
    labels[((z - 30) ** 2 + (y - 32) ** 2 + (x - 33) ** 2) < 9**2] = 2
    labels[((z - 30) ** 2 + (y - 32) ** 2 + (x - 33) ** 2) < 3**2] = 3
    labels[0:2, 40:44, 0:3] = 255  # ignore label counts as occupied
    return labels


def _bead_mask(shape: tuple[int, ...], bead: dict) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), axis=-1)
    d2 = ((grid - np.asarray(bead["center_zyx"])) ** 2).sum(-1)
    return d2 <= bead["radius_vox"] ** 2


def test_beads_only_in_background_never_touch_cells() -> None:
    labels = _two_cells()
    cfg = FiducialsConfig(count=Dist.const(12), radius=Dist.const(2.0), lac=Dist.const(2.0))
    params = sample_fiducials(cfg, labels, voxels_per_unit=1.5, rng=np.random.default_rng(7))
    assert params["requested"] == 12 and len(params["beads"]) == 12
    occupied_dilated = ndi.binary_dilation(labels.numpy() != 0)  # 6-connected dilation by 1
    phantom = torch.where(labels > 0, 0.3, 0.0).float()
    noisy = paint_beads(phantom.clone(), params["beads"])
    painted = np.zeros(labels.shape, dtype=bool)
    for bead in params["beads"]:
        assert bead["radius_vox"] == pytest.approx(3.0)
        assert bead["lac"] == 2.0
        mask = _bead_mask(tuple(labels.shape), bead)
        assert mask.any()
        assert not (mask & occupied_dilated).any()
        assert not (mask & painted).any()  # beads do not overlap each other
        painted |= mask
    cells = labels.numpy() != 0
    assert np.array_equal(noisy.numpy()[cells], phantom.numpy()[cells])  # cell voxels unchanged
    assert np.all(noisy.numpy()[painted] == np.float32(2.0))
    assert np.array_equal(noisy.numpy()[~painted], phantom.numpy()[~painted])


def test_count_radius_and_lac_follow_the_config() -> None:
    labels = torch.zeros((32, 32, 32), dtype=torch.uint8)
    cfg = FiducialsConfig(radius=Dist.normal(4.0, 0.4, 3.0, 5.0), lac=Dist.uniform(1.0, 3.0))
    rng = np.random.default_rng(11)
    counts, radii, lacs = [], [], []
    for _ in range(300):
        p = sample_fiducials(cfg, labels, voxels_per_unit=0.25, rng=rng)
        counts.append(p["requested"])
        assert len(p["beads"]) == p["requested"]
        radii += [b["radius_vox"] for b in p["beads"]]
        lacs += [b["lac"] for b in p["beads"]]
    counts_a = np.asarray(counts)
    assert counts_a.min() >= 3 and counts_a.max() <= 25
    assert counts_a.mean() == pytest.approx(15.5, abs=0.6)  # E[int(clip(N(16, 4), 3, 25))] ≈ 15.5
    radii_a = np.asarray(radii) / 0.25
    assert radii_a.min() >= 3.0 and radii_a.max() <= 5.0
    assert radii_a.mean() == pytest.approx(4.0, abs=0.05)
    assert min(lacs) >= 1.0 and max(lacs) < 3.0


def test_crowded_background_places_fewer_beads(caplog: pytest.LogCaptureFixture) -> None:
    labels = torch.ones((16, 16, 16), dtype=torch.uint8)
    labels[:, :, :3] = 0  # a thin slab of background, too thin for radius-3 beads
    cfg = FiducialsConfig(count=Dist.const(5), radius=Dist.const(3.0), max_candidates_per_bead=20)
    with caplog.at_level(logging.WARNING):
        p = sample_fiducials(cfg, labels, voxels_per_unit=1.0, rng=np.random.default_rng(0))
    assert p["requested"] == 5 and p["beads"] == []
    assert "placed 0 of 5" in caplog.text


def test_disabled_and_deterministic() -> None:
    labels = _two_cells(32)
    assert sample_fiducials(FiducialsConfig(enabled=False), labels, 1.0, np.random.default_rng(0)) == {
        "requested": 0,
        "beads": [],
    }
    a = sample_fiducials(FiducialsConfig(), labels, 0.5, np.random.default_rng(5))
    b = sample_fiducials(FiducialsConfig(), labels, 0.5, np.random.default_rng(5))
    assert a == b
