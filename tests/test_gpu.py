"""The CUDA path (run with ``-m gpu`` on a machine with a GPU; skipped elsewhere)."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_triton_projector_on_cuda_matches_the_tables():
    from simaq_factory.tomo import kernels
    from simaq_factory.tomo.projector import resolved_backend

    assert kernels.self_check("cuda:0") == ""
    assert resolved_backend("auto", torch.device("cuda")).startswith("triton ")
    gen = torch.Generator().manual_seed(3)
    vol = torch.rand((80, 96, 96), generator=gen).cuda()  # 80 slices: a partial 64-slice tile
    geom = Geometry(n=96, angles=tuple(math.radians(a) for a in np.arange(-50, 50, 0.7)))
    p_tab = forward_project(vol, geom)
    p_tri = forward_project(vol, geom, backend="triton")
    torch.testing.assert_close(p_tri, p_tab, rtol=1e-5, atol=1e-4)
    assert torch.equal(p_tri, forward_project(vol, geom, backend="triton"))  # same bits again
    r_tab = fbp(p_tab, geom, filter="hamming")
    r_tri = fbp(p_tab, geom, filter="hamming", backend="triton")
    torch.testing.assert_close(r_tri, r_tab, rtol=1e-4, atol=1e-4)
    recipe = load_recipe(SMOKE, ["execution.projector=triton"])
    a_tri, rec = render_sample(recipe, 1, torch.device("cuda"))
    a_tab, _ = render_sample(load_recipe(SMOKE), 1, torch.device("cuda"))
    assert a_tri["phantom"].tobytes() == a_tab["phantom"].tobytes()
    np.testing.assert_allclose(a_tri["recon"], a_tab["recon"], rtol=1e-3, atol=1e-3)


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


def test_noisy_on_cuda_is_the_cpu_bytes():
    """Phantom-space artifacts (blur, beads, ice cracks, texture) use exactly rounded ops only: the
    noisy volume is the same bytes on a GPU as on the CPU (the banks are made on the CPU for both)."""
    recipe = load_recipe(SMOKE)
    for index in (0, 3):
        a_cpu, _ = render_sample(recipe, index, torch.device("cpu"))
        a_gpu, _ = render_sample(recipe, index, torch.device("cuda"))
        assert a_cpu["noisy"].tobytes() == a_gpu["noisy"].tobytes(), index


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


def test_to_host_gives_own_arrays_unless_views_are_asked_for():
    from simaq_factory.pipeline import to_host

    a = torch.arange(6.0, device="cuda").reshape(2, 3)
    x = to_host(a, "t")
    y = to_host(a + 10, "t")
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and y.tolist() == [[10, 11, 12], [13, 14, 15]]
    v = to_host(a, "t", view=True)
    w = to_host(torch.zeros(3, device="cuda"), "t", view=True)  # smaller: the same page-locked buffer
    assert w.tolist() == [0, 0, 0] and v.tolist() == [[0, 0, 0], [3, 4, 5]]


def test_samples_rendered_on_cuda_are_distinct_arrays():
    recipe = load_recipe(SMOKE)
    a, _ = render_sample(recipe, 0, torch.device("cuda"))
    b, _ = render_sample(recipe, 1, torch.device("cuda"))
    for name in ("phantom", "labels", "recon"):
        assert a[name].tobytes() != b[name].tobytes(), name


def test_fp16_training_resumes_on_cuda_and_continues_a_cpu_run(tmp_path):
    """AMP (fp16 with a grad scaler), accumulation and clipping on CUDA, stopped and resumed; and a
    run begun on the CPU (no scaler state) continued on CUDA with fp16."""
    from simaq_train.config import config_from_dict
    from simaq_train.engine.fit import fit
    from simaq_train.engine.parts import load_checkpoint
    from simaq_train.testing import write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=2, shape=(16, 32, 32))

    def cfg(out: Path, device: str, steps: int):  # type: ignore[no-untyped-def]
        return config_from_dict({
            "seed": 1, "data": {"train": [str(ds)], "background_drop": 1.0, "fov_margin": 2.0},
            "model": {"init_features": 4, "depth": 2, "out_channels": 0},
            "optim": {"lr": 0.01, "batch_size": 4, "accumulate": 2, "clip": 1.0, "amp": "fp16",
                      "max_steps": steps, "epochs": 100},
            "run": {"out": str(out), "device": device, "checkpoint_every": 1, "progress": False},
        })

    assert fit(cfg(tmp_path / "gpu", "cuda", 3)).step == 3
    ck = load_checkpoint(tmp_path / "gpu" / "last.pt")
    assert ck["scaler"] and ck["scaler"]["scale"] > 0
    assert fit(cfg(tmp_path / "gpu", "cuda", 5)).step == 5
    assert fit(cfg(tmp_path / "mixed", "cpu", 2)).step == 2
    assert load_checkpoint(tmp_path / "mixed" / "last.pt")["scaler"] == {}
    assert fit(cfg(tmp_path / "mixed", "cuda", 4)).step == 4
    weights = load_checkpoint(tmp_path / "mixed" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_true_div_is_correctly_rounded_on_cuda():
    from simaq_factory.device import true_div

    x = torch.rand(1_000_000, generator=torch.Generator().manual_seed(1)) * 100 - 50
    for d in (3.7, 27.0, 1.25):
        want = true_div(x, d)
        assert want.numpy().tobytes() == (x.numpy() / np.float32(d)).tobytes()
        assert true_div(x.cuda(), d).cpu().numpy().tobytes() == want.numpy().tobytes()


def test_fiducial_clearance_is_the_same_on_cuda():
    from simaq_factory.artifacts.fiducials import _clearance

    rng = np.random.default_rng(3)
    labels = torch.from_numpy((rng.random((40, 48, 44)) < 0.02).astype(np.uint8))
    centres = rng.uniform(0, 1, size=(2000, 3)) * np.array([40, 48, 44]) - 0.5
    cpu = _clearance(labels, centres, 6.3)
    assert cpu.tobytes() == _clearance(labels.cuda(), centres, 6.3).tobytes()


NOISY_SINOGRAMS = ["acquisition.sinogram.poisson.enabled=true", "acquisition.sinogram.detector_noise.enabled=true",
                   "acquisition.sinogram.misalignment.enabled=true", "acquisition.axes=3"]


def test_device_noise_misalignment_and_three_axes_repeat_bit_for_bit_on_cuda():
    """Poisson and detector noise (device generators), projection shifts and tilts (grid_sample) and
    three acquisition axes: one GPU renders the same bytes twice, and the phantom and labels are
    the CPU's."""
    recipe = load_recipe(SMOKE, NOISY_SINOGRAMS)
    first, _ = render_sample(recipe, 2, torch.device("cuda"))
    again, _ = render_sample(recipe, 2, torch.device("cuda"))
    for name in first:
        assert first[name].tobytes() == again[name].tobytes(), name
    on_cpu, _ = render_sample(recipe, 2, torch.device("cpu"))
    assert on_cpu["phantom"].tobytes() == first["phantom"].tobytes()
    assert on_cpu["labels"].tobytes() == first["labels"].tobytes()
    assert first["recon"].shape == on_cpu["recon"].shape and np.isfinite(first["recon"]).all()


def test_iterative_reconstructions_on_cuda_match_cpu():
    from simaq_factory.tomo.iterative import cgls, sirt

    gen = torch.Generator().manual_seed(5)
    vol = torch.rand((6, 64, 64), generator=gen)
    geom = Geometry(n=64, angles=tuple(math.radians(a) for a in np.arange(-50, 50, 2.0)))
    proj = forward_project(vol, geom)
    for method in (sirt, cgls):
        r_cpu = method(proj, geom, iterations=10)
        r_gpu = method(proj.cuda(), geom, iterations=10)
        assert r_gpu.device.type == "cuda"
        torch.testing.assert_close(r_gpu.cpu(), r_cpu, rtol=1e-3, atol=1e-3)


def test_predict_on_cuda_agrees_with_cpu():
    from simaq_train.inference import predict_volume
    from simaq_train.model import CenterSliceUNet, ModelConfig

    torch.manual_seed(0)
    model = CenterSliceUNet(ModelConfig(init_features=8, depth=3)).eval()
    vol = np.random.default_rng(0).normal(size=(12, 40, 44)).astype(np.float32)
    on_cpu = predict_volume(model, vol, window=5, batch_size=4)
    on_gpu = predict_volume(model.cuda(), vol, window=5, batch_size=4, device=torch.device("cuda"), amp="off")
    assert on_gpu.shape == on_cpu.shape and on_gpu.dtype == np.uint8
    assert np.mean(on_gpu == on_cpu) > 0.99  # full precision: only near-ties may differ
    half = predict_volume(model, vol, window=5, batch_size=4, device=torch.device("cuda"), amp="auto")
    assert np.mean(half == on_cpu) > 0.95


def test_a_local_cluster_builds_on_cuda_as_inline_does(tmp_path):
    """Two LocalCluster workers requesting the GPU resource, each its own CUDA context (one GPU or
    two): the dataset is complete and the same bytes as an inline CUDA build of one GPU model."""
    args = ["build", str(SMOKE), "--device", "cuda"]
    inline = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "inline"), "--cluster", "inline"])
    assert inline.exit_code == 0, inline.output
    local = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "local"), "--workers", "2"])
    assert local.exit_code == 0, local.output
    a = zarr.open_group(tmp_path / "inline" / "dataset.zarr", mode="r")
    b = zarr.open_group(tmp_path / "local" / "dataset.zarr", mode="r")
    same_model = len({torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())}) == 1
    for name in ("phantom", "labels", "recon"):
        if name != "recon" or same_model:
            assert a[name][...].tobytes() == b[name][...].tobytes(), name


def test_auto_falls_back_to_the_tables_when_the_triton_self_check_fails(monkeypatch, caplog):
    from simaq_factory.tomo import kernels, projector

    if not kernels.available():
        pytest.skip("needs Triton")
    monkeypatch.setattr(kernels, "self_check", lambda device: "max rel. difference 0.5 (simulated)")
    data = torch.zeros(1, device="cuda")
    with caplog.at_level("WARNING"):
        assert projector.use_kernels("auto", data) is False
    with pytest.raises(projector.KernelCheckFailed, match="simulated"):
        projector.use_kernels("triton", data)
