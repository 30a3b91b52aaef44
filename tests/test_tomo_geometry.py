"""tomo/geometry.py: where the rotation axis is imaged on the detector, for any centre convention and
detector spacing (checked on the projector's output against the documented convention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simaq_factory.tomo import Geometry, forward_project


@pytest.mark.parametrize("n,center,spacing,det", [(24, "skimage", 1.3, 27), (24, "skimage", 0.8, 44),
                                                  (25, "astra", 1.3, 23), (26, 12.4, 1.7, 20)])
def test_a_blob_on_the_rotation_axis_projects_onto_det_center(n, center, spacing, det) -> None:
    geom = Geometry.from_degrees(n, [0.0, 30.0, 45.0, 90.0, 133.0], det_count=det, det_spacing=spacing,
                                 center=center)
    c = geom.image_center
    yy, xx = np.mgrid[:n, :n]
    blob = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * 2.0**2))  # σ = 2 px: finely sampled
    proj = forward_project(torch.tensor(blob[None]), geom)[:, 0].numpy()  # (A, D)
    cols = np.arange(det)
    centroid = (proj * cols).sum(1) / proj.sum(1)
    # the module's convention: the detector is centred on the volume centre (n − 1)/2, so the axis
    # lands (c − (n − 1)/2)/det_spacing columns off the detector's middle (D − 1)/2
    expected = (det - 1) / 2 + (c - (n - 1) / 2) / spacing
    np.testing.assert_allclose(centroid, expected, atol=0.01)
    assert geom.det_center == pytest.approx(expected)
