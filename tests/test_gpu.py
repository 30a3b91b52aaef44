"""The CUDA path (run with ``-m gpu`` on a machine with a GPU; skipped elsewhere)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import load_recipe
from simaq_factory.tomo import Geometry, fbp, forward_project

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def test_projector_and_fbp_cuda_match_cpu():
    gen = torch.Generator().manual_seed(0)
    vol = torch.rand((16, 96, 96), generator=gen)
    geom = Geometry(n=96, angles=tuple(math.radians(a) for a in np.arange(-50, 50, 1.0)))
    p_cpu = forward_project(vol, geom)
    p_gpu = forward_project(vol.cuda(), geom)
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-5, atol=1e-4)
    r_cpu = fbp(p_cpu, geom, filter="hamming")
    r_gpu = fbp(p_cpu.cuda(), geom, filter="hamming")
    torch.testing.assert_close(r_gpu.cpu(), r_cpu, rtol=1e-4, atol=1e-4)


def test_sample_on_cuda_matches_cpu_without_device_noise():
    recipe = load_recipe(SMOKE, ["acquisition.sinogram.ice_thickness.enabled=false",
                                 "artifacts.perlin.enabled=false"])
    a_cpu, rec_cpu = render_sample(recipe, 1, torch.device("cpu"))
    a_gpu, rec_gpu = render_sample(recipe, 1, torch.device("cuda"))
    assert a_cpu["labels"].tobytes() == a_gpu["labels"].tobytes()
    assert a_cpu["phantom"].tobytes() == a_gpu["phantom"].tobytes()
    assert rec_cpu["phantom_spec"] == rec_gpu["phantom_spec"]
    assert rec_cpu["angles"] == rec_gpu["angles"]
    err = np.linalg.norm(a_gpu["recon"] - a_cpu["recon"]) / np.linalg.norm(a_cpu["recon"])
    assert err < 1e-4


def test_cuda_build_is_repeatable(tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["build", str(SMOKE), "-o", str(out), "--cluster", "inline",
                                           "--device", "cuda"])
        assert result.exit_code == 0, result.output
        outs.append(zarr.open_group(out / "dataset.zarr", mode="r"))
    for name in ("phantom", "labels", "recon", "sinogram"):
        assert outs[0][name][...].tobytes() == outs[1][name][...].tobytes(), name
