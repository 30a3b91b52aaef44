"""simaq_factory.tomo's Python API: half-precision FBP, ReconstructionConfig's checks, a missing
geometry."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from simaq_factory.tomo import Geometry, ReconstructionConfig, fbp, forward_project, reconstruct

N = 32


@pytest.fixture(scope="module")
def scan() -> SimpleNamespace:
    geom = Geometry.arc_degrees(N, 120, 2.0)
    yy, xx = np.mgrid[:N, :N]
    img = 1.0 * ((yy - 12) ** 2 + (xx - 18) ** 2 < 5**2) + 0.5 * ((yy - 20) ** 2 + (xx - 11) ** 2 < 3**2)
    vol = torch.from_numpy(np.stack([img, img.T]).astype(np.float32))
    return SimpleNamespace(geom=geom, vol=vol, proj=forward_project(vol, geom))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fbp_of_half_precision_projections_runs_in_float32_and_returns_their_dtype(scan, dtype):
    """torch's CPU FFT has no half path ('Unsupported dtype Half'), while the docstring promised
    any floating dtype back."""
    ref = fbp(scan.proj, scan.geom)
    got = fbp(scan.proj.to(dtype), scan.geom)
    assert got.dtype == dtype and got.shape == ref.shape
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # the input's rounding, not the filter's
    assert float((got.float() - ref).norm() / ref.norm()) < tol
    via_config = reconstruct(scan.proj.to(dtype), scan.geom, ReconstructionConfig(filter="ram-lak"))
    assert via_config.dtype == dtype


@pytest.mark.parametrize("field,value", [("center", "middle"), ("center", float("nan")), ("center", True),
                                         ("weighting", "uniform")])
def test_reconstruction_config_names_a_bad_center_or_weighting_at_construction(field, value):
    """It constructed, and reconstruct() then named Geometry.center / Geometry.weighting."""
    with pytest.raises(ValueError, match=rf"^reconstruction\.{field} must be "):
        ReconstructionConfig(**{field: value})


def test_reconstruction_config_keeps_the_values_it_takes():
    for kw in ({"center": "skimage"}, {"center": "astra"}, {"weighting": "quadrature"}, {"weighting": "pi_over_2A"}):
        ReconstructionConfig(**kw)  # type: ignore[arg-type]


def test_reconstruct_refuses_a_config_that_is_not_a_reconstruction_config(scan):
    with pytest.raises(TypeError, match=r"cfg must be a ReconstructionConfig .* got dict"):
        reconstruct(scan.proj, scan.geom, {"method": "fbp"})  # type: ignore[arg-type]


def test_a_missing_geometry_is_named(scan):
    """forward_project(vol, None): AttributeError 'NoneType' object has no attribute 'n'."""
    with pytest.raises(ValueError, match=r"^geom must be a simaq_factory.tomo.Geometry, got NoneType$"):
        forward_project(scan.vol, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^geom must be a simaq_factory.tomo.Geometry, got dict$"):
        fbp(scan.proj, {"n": N})  # type: ignore[arg-type]
