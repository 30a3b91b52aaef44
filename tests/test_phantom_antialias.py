"""Partial-volume anti-aliasing: exactness against a brute-force sub-sample oracle, interior voxels
unchanged, boundary values between the neighbouring LACs, mass convergence, labels untouched."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from simaq_factory.phantom.config import PhantomConfig
from simaq_factory.phantom.sample import sample_phantom
from simaq_factory.phantom.spec import CellSpec, DeformationSpec, DropletSpec, PhantomSpec, VacuoleSpec
from simaq_factory.phantom.voxelization import voxelize
from simaq_factory.recipe.schema import parse_section
from test_phantom_deform import make_cfg, oracle

SHAPE = (28, 36, 32)


def _toy(k: int, deformation: DeformationSpec | None = None) -> PhantomSpec:
    # A thin wall (0.6 voxel, thinner than a voxel), a vacuole with a droplet inside it, a droplet
    # tangent-ish to the vacuole, a sub-voxel droplet.
    cell = CellSpec(
        center=(13.7, 17.6, 15.4), radii=(11.3, 15.2, 13.1), wall_width=0.6, lac=0.35, wall_lac=0.55,
        vacuoles=(VacuoleSpec(center=(13.0, 16.0, 17.0), radii=(5.2, 6.1, 4.7), lac=0.18),),
        droplets=(
            DropletSpec(center=(13.1, 16.2, 17.3), radius=1.7, lac=0.6),
            DropletSpec(center=(13.2, 24.9, 12.2), radius=2.4, lac=0.7),
            DropletSpec(center=(8.3, 12.1, 9.6), radius=0.4, lac=0.65),
        ),
    )
    return PhantomSpec(shape=SHAPE, scale=1.0, cells=(cell,), deformation=deformation, supersample=k)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("deformed", [False, True])
def test_equals_brute_force_subsampling(k: int, deformed: bool) -> None:
    d = DeformationSpec(mode="3d", seed=3, sigma=5.0, std=1.5, spacing=1.25) if deformed else None
    spec = _toy(k, d)
    ph, lab = voxelize(spec)
    want, want_lab = oracle(spec, k)
    diff = np.abs(ph.numpy() - want)
    # float32 vs float64 rounding may flip a sub-sample lying on a surface: ≤ one sub-sample's worth.
    assert np.sum(diff > 1e-6) <= 3 and diff.max() <= 0.7 / k**3 + 1e-6
    assert np.sum(lab.numpy() != want_lab) <= 1
    # Labels are by voxel centre: identical to the non-anti-aliased rendering.
    _, lab1 = voxelize(dataclasses.replace(spec, supersample=1))
    assert torch.equal(lab, lab1)


def test_interior_unchanged_and_boundary_between_lacs() -> None:
    spec = _toy(4)
    ph, _ = voxelize(spec)
    ph1, _ = voxelize(dataclasses.replace(spec, supersample=1))
    sub, _ = oracle(spec, 4)
    _, lab_fine = oracle(dataclasses.replace(spec, shape=SHAPE), 1)
    # Interior = all 64 sub-samples carry the centre value (brute force): value unchanged, bit for bit.
    changed = ph.numpy() != ph1.numpy()
    interior = np.isclose(sub, ph1.numpy(), atol=1e-7, rtol=0)
    assert not np.any(changed & interior & (np.abs(ph.numpy() - ph1.numpy()) > 1e-6))
    np.testing.assert_array_equal(ph.numpy()[interior], np.where(interior, ph1.numpy(), 0)[interior])
    assert changed.sum() > 100
    # Outer boundary of the cell: between background 0 and the wall LAC.
    outer = (lab_fine == 0) & changed
    assert outer.any() and ph.numpy()[outer].min() > 0 and ph.numpy()[outer].max() < 0.55
    # The droplet inside the vacuole: boundary voxels lie between vacuole and droplet LAC.
    c, r = np.array([13.1, 16.2, 17.3]), 1.7
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    dist = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    band = changed & (np.abs(dist - r) < 0.87)
    vals = ph.numpy()[band]
    assert band.sum() > 10 and vals.min() >= np.float32(0.18) and vals.max() <= np.float32(0.6)


def test_total_mass_converges_to_the_analytic_volume() -> None:
    rng = np.random.default_rng(0)
    radii, lac = (5.3, 7.1, 6.2), 0.5
    exact = lac * 4.0 / 3.0 * math.pi * np.prod(radii)
    errs = {k: [] for k in (1, 2, 4, 8)}
    for _ in range(4):
        c = tuple(float(v) for v in rng.uniform(12.0, 14.0, 3))
        cell = CellSpec(center=c, radii=radii, wall_width=0.0, lac=lac, wall_lac=lac)
        for k in errs:
            ph, _ = voxelize(PhantomSpec(shape=(26, 26, 26), scale=1.0, cells=(cell,), supersample=k))
            errs[k].append(abs(float(ph.double().sum()) - exact) / exact)
    mean = {k: float(np.mean(v)) for k, v in errs.items()}
    assert mean[8] < mean[2] < mean[1] and mean[4] < mean[1]
    assert mean[8] < 2e-3 and max(errs[8]) < 4e-3


def test_sampled_phantoms_with_antialias_and_config() -> None:
    cfg = parse_section(PhantomConfig, {"antialias": {"supersample": 3}}, "phantom")
    assert cfg.antialias.supersample == 3 and PhantomConfig().antialias.supersample == 1
    spec = sample_phantom(make_cfg("2d", k=2, nucleus=True, scale=0.3), (32, 40, 40), np.random.default_rng(2))
    assert spec.supersample == 2
    ph, lab = voxelize(spec)
    assert ph.min() >= 0 and ph.max() <= 1e-6 + max(
        max(c.wall_lac, c.lac, *(d.lac for d in c.droplets), *(v.lac for v in c.vacuoles)) for c in spec.cells
    )
    assert torch.all(ph[lab > 0] > 0)  # labelled voxels keep a positive LAC
    with pytest.raises(ValueError, match="supersample"):
        voxelize(dataclasses.replace(spec, supersample=0))


@pytest.mark.parametrize("mode", [None, "2d", "3d"])
def test_no_division_by_a_host_scalar(monkeypatch: pytest.MonkeyPatch, mode: str | None) -> None:
    """CUDA computes ``tensor / python_float`` as ``tensor * (1 / float)`` (one bit off the CPU's true
    division in a third of float32 values), so an inside test fed by such a division could flip a
    voxel between devices. The phantom path must not divide a tensor by a host scalar: with ``/``
    patched to CUDA's reciprocal form no such division happens and the bytes are unchanged."""
    d = None if mode is None else DeformationSpec(mode=mode, seed=3, sigma=5.0, std=1.5, spacing=1.25)
    spec = _toy(3, d)  # 27 sub-samples: 1/27 is not exact in float32
    ph, lab = voxelize(spec)
    calls: list[str] = []
    true_div = torch.Tensor.__truediv__

    def cuda_like(self: torch.Tensor, other: object) -> torch.Tensor:
        if isinstance(other, (int, float)) and self.is_floating_point():
            calls.append(repr(other))
            inv = torch.tensor(1.0, dtype=self.dtype) / torch.tensor(float(other), dtype=self.dtype)
            return self * inv
        return true_div(self, other)

    monkeypatch.setattr(torch.Tensor, "__truediv__", cuda_like)
    ph2, lab2 = voxelize(spec)
    assert calls == []
    assert ph.numpy().tobytes() == ph2.numpy().tobytes() and torch.equal(lab, lab2)


def test_one_reduction_is_used_only_where_every_sum_is_exact() -> None:
    from simaq_factory.phantom.antialias import _sum_is_exact

    lacs = [0.18, 0.35, 0.55, 0.6, 0.7, 2.1]
    assert _sum_is_exact(lacs, 512) and _sum_is_exact([], 8) and _sum_is_exact([0.0], 27)
    assert not _sum_is_exact([0.5, 1e-7], 512) and not _sum_is_exact([0.5, float("nan")], 8)
    rng = np.random.default_rng(0)
    for kk in (8, 27, 64, 512):
        vals = torch.from_numpy(rng.choice(np.array([0.0, *lacs], np.float32), size=(4000, kk)))
        loop = vals[:, 0].double()
        for j in range(1, kk):
            loop = loop + vals[:, j].double()
        assert vals.double().sum(dim=1).numpy().tobytes() == loop.numpy().tobytes()
        # in reverse order too: exact sums do not depend on it
        assert vals.flip(1).double().sum(dim=1).numpy().tobytes() == loop.numpy().tobytes()


@pytest.mark.parametrize("rows", [13, 50])
def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """Boundary voxels are processed in chunks of ``_CHUNK // k³`` voxels (z-sorted); an object whose
    box starts or ends at a chunk's first/last slab must still be replayed there. With tiny chunks
    (borders everywhere, mid-object) the phantom and labels are bitwise those of one big chunk."""
    from simaq_factory.phantom import antialias as aa

    k = 2
    spec = sample_phantom(make_cfg("2d", k=k, nucleus=True, scale=0.3), (32, 32, 32), np.random.default_rng(5))
    assert spec.supersample == k
    ph, lab = voxelize(spec)
    assert aa._CHUNK // k**3 > 32**3  # the default is one chunk at this size
    monkeypatch.setattr(aa, "_CHUNK", rows * k**3)
    ph2, lab2 = voxelize(spec)
    assert ph.numpy().tobytes() == ph2.numpy().tobytes() and torch.equal(lab, lab2)
