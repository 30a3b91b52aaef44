"""End-to-end oracles of the factory: stored arrays re-derived from what the provenance records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.pipeline import INPUT_CIRCLE_PADDING, cylinder_mask
from simaq_factory.recipe.io import load_recipe
from simaq_factory.tomo import Geometry, forward_project

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
N = 32
# no sinogram artifacts (smoke enables flicker and ice thickness; misalignment, Poisson and detector
# noise are off): the stored sinogram is then the plain projection of the stored noisy volume
JITTERED = ["dataset.shape=[32,32,32]", "dataset.chunk_z=4", "phantom.scale=0.15", "dataset.n_samples=1",
            "dataset.samples_per_shard=1", "acquisition.sinogram.flicker.enabled=false",
            "acquisition.sinogram.ice_thickness.enabled=false", "acquisition.jitter_deg=2", *small_banks.SETS]


@pytest.fixture(scope="module")
def jittered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oracles") / "jittered"
    sets = [x for s in JITTERED for x in ("--set", s)]
    r = CliRunner().invoke(main, ["build", str(SMOKE), "-o", str(out), "--cluster", "inline", *sets])
    assert r.exit_code == 0, r.output
    return out


def test_stored_sinogram_is_the_projection_at_the_jittered_forward_angles(jittered):
    """Reference §3: forward projection at the jittered angles, reconstruction at the nominal ones."""
    recipe = load_recipe(SMOKE, JITTERED)
    assert not recipe.acquisition.sinogram.misalignment.enabled and not recipe.acquisition.sinogram.poisson.enabled
    assert not recipe.acquisition.sinogram.detector_noise.enabled
    g = zarr.open_group(jittered / "dataset.zarr", mode="r")
    noisy, sino = g["noisy"][0], g["sinogram"][0]
    rec = json.loads((jittered / "provenance" / "shard-000000.json").read_text())["sample_records"][0]
    fwd, nominal = rec["angles"]["forward_deg"], rec["angles"]["recon_deg"]
    a = len(nominal)
    assert len(fwd) == a and np.isnan(sino[a:]).all()  # padded with NaN to the dataset's a_max
    sino = sino[:a]
    np.testing.assert_allclose(g["angles"][0][:a], nominal, rtol=1e-6)
    assert np.abs(np.subtract(fwd, nominal)).max() > 1.0  # the jitter (σ = 2°) is there to see

    vol = torch.from_numpy(noisy) * cylinder_mask(N, INPUT_CIRCLE_PADDING, torch.device("cpu"))

    def project(deg):  # noqa: ANN001, ANN202
        geom = Geometry(n=N, angles=tuple(math.radians(a) for a in deg), center=recipe.reconstruction.center)
        return forward_project(vol.contiguous(), geom).numpy()

    at_fwd, at_nominal = project(fwd), project(nominal)
    scale = float(np.abs(sino).max())
    err_fwd = float(np.abs(sino - at_fwd).max()) / scale
    err_nominal = float(np.abs(sino - at_nominal).max()) / scale
    assert err_fwd < 1e-5, err_fwd
    assert err_nominal > 1e-2, err_nominal  # the nominal angles are measurably not what was projected
