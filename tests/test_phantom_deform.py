"""Elastic deformation: field statistics vs the reference, consistency with an independent oracle,
2D/3D structure, bbox-local correctness, determinism (threads, JSON regeneration)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from simaq_factory.phantom.config import DeformationConfig, PhantomConfig
from simaq_factory.phantom.deform import DisplacementField, build_grid, sample_deformation
from simaq_factory.phantom.sample import sample_phantom
from simaq_factory.phantom.spec import CellSpec, DeformationSpec, DropletSpec, PhantomSpec, VacuoleSpec
from simaq_factory.phantom.voxelization import voxelize
from simaq_factory.recipe.fields import Dist
from simaq_factory.recipe.schema import parse_section


def make_cfg(mode: str = "2d", alpha: float = 500.0, sigma: float = 40.0, k: int = 1,
             nucleus: bool = False, scale: float | str = "auto") -> PhantomConfig:
    base = PhantomConfig()
    return dataclasses.replace(
        base,
        scale=scale,
        cells=dataclasses.replace(base.cells, count=Dist.uniform(1.0, 3.0)),
        deformation=DeformationConfig(mode=mode, alpha=alpha, sigma=sigma),  # type: ignore[arg-type]
        antialias=dataclasses.replace(base.antialias, supersample=k),
        nucleus=dataclasses.replace(base.nucleus, enabled=nucleus),
    )


def _objects(cell: CellSpec) -> list[tuple[tuple[float, ...], tuple[float, ...], float, int]]:
    out = [(cell.center, cell.outer_radii, cell.wall_lac, 1), (cell.center, cell.radii, cell.lac, 1)]
    if cell.nucleus is not None:
        out.append((cell.nucleus.center, cell.nucleus.radii, cell.nucleus.lac, 4))
    out += [(v.center, v.radii, v.lac, 2) for v in cell.vacuoles]
    out += [(d.center, d.radii, d.lac, 3) for d in cell.droplets]
    return out


def oracle(spec: PhantomSpec, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 NumPy rendering: (mean LAC over k³ sub-samples, label at the centre).

    The field comes from ``build_grid`` and is interpolated with scipy's ``map_coordinates``.
    """
    shape = spec.shape
    o = (np.arange(k) + 0.5) / k - 0.5
    offs = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    centres = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"), -1)
    centres = centres.reshape(-1, 3)

    def deformed(p: np.ndarray) -> np.ndarray:
        d = spec.deformation
        if d is None:
            return p
        grid = build_grid(d, shape)
        axes = (1, 2) if d.mode == "2d" else (0, 1, 2)
        t = np.stack([(p[:, a] + 1.0) / d.spacing for a in axes])
        out = p.copy()
        for ci, a in enumerate(axes):
            out[:, a] += scipy.ndimage.map_coordinates(grid[ci], t, order=1, mode="nearest")
        return out

    def paint(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        val = np.zeros(len(p))
        lab = np.zeros(len(p), dtype=np.uint8)
        for cell in spec.cells:
            for c, r, v, lb in _objects(cell):
                inside = np.sum(((p - np.asarray(c)) / np.asarray(r)) ** 2, axis=1) <= 1.0
                val[inside] = np.float32(v)
                lab[inside] = lb
        return val, lab

    val_c, lab_c = paint(deformed(centres))
    if k == 1:
        mean = val_c
    else:
        sub = (centres[:, None, :] + offs[None]).reshape(-1, 3)
        mean = paint(deformed(sub))[0].reshape(-1, k**3).mean(axis=1)
    return mean.reshape(shape), lab_c.reshape(shape)


def test_field_strength_matches_the_reference_formula_and_scales_with_size() -> None:
    cfg = DeformationConfig()
    assert cfg.displacement_std() == pytest.approx(500 / (4 * math.sqrt(3 * math.pi) * 40))
    # Emulate the reference (§1.11): U(-1, 1) on 512², Gaussian blur σ=40, × α/size, in pixels × size/2.
    rng = np.random.default_rng(0)
    ref = scipy.ndimage.gaussian_filter(rng.uniform(-1, 1, (512, 512)), 40, mode="reflect", truncate=4.0)
    ref_px = ref * 500 / 512 * 256
    d512 = sample_deformation(cfg, 1.2, np.random.default_rng(1))
    assert d512 is not None and d512.sigma == pytest.approx(40.0)
    stds = [build_grid(dataclasses.replace(d512, seed=s), (512, 512, 512)).std() for s in range(3)]
    assert np.mean(stds) == pytest.approx(cfg.displacement_std(), rel=0.1)
    assert np.mean(stds) == pytest.approx(ref_px.std(), rel=0.25)  # one reference draw is noisy
    # 64³ with scale auto: same deformation relative to the volume.
    d64 = sample_deformation(cfg, 1.2 * 64 / 512, np.random.default_rng(1))
    assert d64 is not None
    assert d64.sigma / 64 == pytest.approx(d512.sigma / 512) and d64.std / 64 == pytest.approx(d512.std / 512)
    assert sample_deformation(DeformationConfig(mode="off"), 1.2, np.random.default_rng(1)) is None


def test_field_bounds_and_point_evaluation() -> None:
    d = DeformationSpec(mode="3d", seed=5, sigma=6.0, std=2.0, spacing=1.5)
    f = DisplacementField(d, (20, 24, 28), "cpu")
    u = f.on_box((0, 0, 0), (20, 24, 28))
    assert u.shape == (3, 20, 24, 28)
    assert np.all(u.abs().amax(dim=(1, 2, 3)).numpy() <= f.umax + 1e-6)
    pts = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (20, 24, 28)),
                                     indexing="ij"), -1).reshape(-1, 3)
    up = f.at_points(pts).T.reshape(3, 20, 24, 28)
    torch.testing.assert_close(up, u, atol=1e-5, rtol=0)
    # Lipschitz bound holds between neighbouring voxels.
    for a in range(3):
        diff = torch.diff(u, dim=a + 1).abs().amax(dim=(1, 2, 3)).numpy()
        assert np.all(diff <= f.lipschitz[:, a] + 1e-6)


def _toy(mode: str, shape: tuple[int, int, int] = (24, 40, 40), std: float = 2.5) -> PhantomSpec:
    d = DeformationSpec(mode=mode, seed=11, sigma=4.0, std=std, spacing=1.0)
    cell = CellSpec(center=(11.5, 19.5, 19.5), radii=(1000.0, 12.0, 14.0), wall_width=1.2, lac=0.35, wall_lac=0.55,
                    vacuoles=(VacuoleSpec(center=(11.5, 17.0, 21.0), radii=(1000.0, 5.0, 6.0), lac=0.18),),
                    droplets=(DropletSpec(center=(11.5, 24.0, 14.0), radius=3.0, lac=0.6),))
    return PhantomSpec(shape=shape, scale=1.0, cells=(cell,), deformation=d)


def test_2d_mode_is_constant_along_z_and_3d_is_not() -> None:
    # A cell and vacuole spanning all of z: only the droplet varies with z without deformation.
    _, lab2 = voxelize(_toy("2d"))
    _, lab3 = voxelize(_toy("3d"))
    _, lab0 = voxelize(dataclasses.replace(_toy("2d"), deformation=None))
    no_drop = (lab0 != 3).all(dim=0)  # (y, x) columns never touched by the droplet
    l2, l3 = lab2.numpy(), lab3.numpy()
    cols = no_drop.numpy() & (l2 != 3).all(axis=0) & (l3 != 3).all(axis=0)
    assert np.all(l2[:, cols] == l2[:1, cols])
    assert not np.all(l3[:, cols] == l3[:1, cols])
    assert (l2 != lab0.numpy()).sum() > 50  # the deformation is visible


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_matches_independent_oracle_and_stays_consistent(mode: str) -> None:
    cfg = make_cfg(mode, alpha=6000.0, sigma=40.0, nucleus=True, scale=0.3)
    for seed in range(3):
        spec = sample_phantom(cfg, (40, 48, 48), np.random.default_rng(seed))
        assert spec.deformation is not None and spec.deformation.mode == mode
        ph, lab = voxelize(spec)
        want_ph, want_lab = oracle(spec)
        mism = lab.numpy() != want_lab
        assert mism.sum() <= 3, f"{mism.sum()} label mismatches vs oracle"  # float32 rounding only
        agree = ~mism
        np.testing.assert_array_equal(ph.numpy()[agree], want_ph[agree].astype(np.float32))
        assert set(np.unique(lab.numpy())) <= {0, 1, 2, 3, 4}
        assert torch.equal(ph > 0, lab > 0)
        f = DisplacementField(spec.deformation, spec.shape, "cpu")
        assert f.umax.max() > 1.0  # strong enough to exercise the bbox growth


def test_deformed_organelles_stay_inside_their_deformed_cell() -> None:
    cfg = make_cfg("3d", alpha=6000.0, nucleus=True, scale=0.3)
    for seed in range(4):
        spec = sample_phantom(cfg, (40, 48, 48), np.random.default_rng(seed))
        bodies = PhantomSpec(
            shape=spec.shape, scale=spec.scale, deformation=spec.deformation,
            cells=tuple(dataclasses.replace(c, wall_width=0.0, vacuoles=(), droplets=(), nucleus=None)
                        for c in spec.cells),
        )
        _, lab = voxelize(spec)
        _, body = voxelize(bodies)
        assert not torch.any((lab >= 2) & (body == 0))


def test_determinism_threads_and_regeneration_from_json() -> None:
    cfg = make_cfg("3d", alpha=4000.0, k=2, nucleus=True, scale=0.3)
    spec = sample_phantom(cfg, (40, 48, 48), np.random.default_rng(3))
    assert spec == sample_phantom(cfg, (40, 48, 48), np.random.default_rng(3))
    back = PhantomSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    threads = torch.get_num_threads()
    outs = []
    try:
        for n, s in ((1, spec), (2, spec), (2, back)):
            torch.set_num_threads(n)
            ph, lab = voxelize(s)
            outs.append((ph.numpy().tobytes(), lab.numpy().tobytes()))
    finally:
        torch.set_num_threads(threads)
    assert outs[0] == outs[1] == outs[2]


def test_config_parses() -> None:
    cfg = parse_section(PhantomConfig, {"deformation": {"mode": "3d", "alpha": 2000}}, "phantom")
    assert cfg.deformation.mode == "3d" and cfg.deformation.alpha == 2000
    assert PhantomConfig().deformation.mode == "2d"
    with pytest.raises(ValueError, match="deformation.mode"):
        parse_section(PhantomConfig, {"deformation": {"mode": "4d"}}, "phantom")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_deformation_and_antialias() -> None:
    spec = sample_phantom(make_cfg("3d", alpha=4000.0, k=2, nucleus=True, scale=0.3), (40, 48, 48),
                          np.random.default_rng(5))
    ph, lab = voxelize(spec)
    phc, labc = voxelize(spec, device="cuda")
    assert (lab != labc.cpu()).sum() <= 2
    assert torch.allclose(ph, phc.cpu(), atol=0.6 / 8)
