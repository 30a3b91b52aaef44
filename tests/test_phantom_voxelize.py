"""Voxelization of phantom specs: oracle counts, paint order, containment, determinism."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from simaq_factory.phantom.config import PhantomConfig
from simaq_factory.phantom.sample import sample_phantom
from simaq_factory.phantom.spec import CellSpec, DropletSpec, PhantomSpec, VacuoleSpec
from simaq_factory.phantom.voxelization import paint_ellipsoid, voxelize

SHAPE = (48, 64, 56)


def _oracle(shape: tuple[int, int, int], c: tuple[float, ...], r: tuple[float, ...]) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1.0


def test_single_ellipsoid_matches_oracle_and_clips_at_border() -> None:
    for c, r in [((20.3, 30.7, 25.1), (7.2, 11.9, 5.5)), ((2.0, 60.0, 0.4), (6.0, 9.0, 4.0))]:
        ph = torch.zeros(SHAPE)
        lab = torch.zeros(SHAPE, dtype=torch.uint8)
        paint_ellipsoid(ph, lab, c, r, 0.5, 2)
        want = _oracle(SHAPE, c, r)
        np.testing.assert_array_equal(lab.numpy() == 2, want)
        np.testing.assert_array_equal(ph.numpy()[want], np.float32(0.5))
        assert ph.numpy()[~want].max() == 0


def _toy_spec() -> PhantomSpec:
    vac = VacuoleSpec(center=(24.0, 32.0, 28.0), radii=(8.0, 9.0, 7.0), lac=0.18)
    inside = DropletSpec(center=(24.0, 32.0, 28.0), radius=3.0, lac=0.6)  # a droplet inside the vacuole
    cell = CellSpec(
        center=(24.0, 32.0, 28.0), radii=(18.0, 20.0, 17.0), wall_width=1.5, lac=0.35, wall_lac=0.55,
        vacuoles=(vac,), droplets=(inside, DropletSpec(center=(24.0, 32.0, 16.0), radius=2.5, lac=0.7)),
    )
    return PhantomSpec(shape=SHAPE, scale=1.0, cells=(cell,))


def test_paint_order_and_values() -> None:
    spec = _toy_spec()
    ph, lab = voxelize(spec)
    assert ph.dtype == torch.float32 and lab.dtype == torch.uint8 and tuple(ph.shape) == SHAPE
    assert lab[24, 32, 28] == 3 and ph[24, 32, 28] == np.float32(0.6)  # droplet over vacuole
    assert lab[24, 32, 34] == 2 and ph[24, 32, 34] == np.float32(0.18)
    assert lab[24, 32, 16] == 3 and ph[24, 32, 16] == np.float32(0.7)
    assert lab[24, 32, 10] == 1 and ph[24, 32, 10] == np.float32(0.55)  # wall shell: 28 − x in (17, 18.5]
    assert lab[24, 32, 9] == 0
    assert lab[24, 32, 12] == 1 and ph[24, 32, 12] == np.float32(0.35)  # cytoplasm
    assert lab[0, 0, 0] == 0 and ph[0, 0, 0] == 0
    assert torch.all((ph == 0) == (lab == 0))


def _cell_body_masks(spec: PhantomSpec) -> list[np.ndarray]:
    masks = []
    for cell in spec.cells:
        ph = torch.zeros(spec.shape)
        lab = torch.zeros(spec.shape, dtype=torch.uint8)
        paint_ellipsoid(ph, lab, cell.center, cell.radii, 1.0, 1)
        masks.append(lab.numpy() == 1)
    return masks


def _organelle_mask(spec: PhantomSpec, cell: CellSpec) -> np.ndarray:
    ph = torch.zeros(spec.shape)
    lab = torch.zeros(spec.shape, dtype=torch.uint8)
    for v in cell.vacuoles:
        paint_ellipsoid(ph, lab, v.center, v.radii, 1.0, 2)
    for d in cell.droplets:
        paint_ellipsoid(ph, lab, d.center, d.radii, 1.0, 3)
    return lab.numpy() > 0


@pytest.mark.parametrize("shape", [(32, 32, 32), (64, 64, 64), (48, 64, 56)])
def test_sampled_phantoms_labels_and_containment(shape: tuple[int, int, int]) -> None:
    cfg = PhantomConfig()
    for seed in range(6):
        spec = sample_phantom(cfg, shape, np.random.default_rng(seed))
        assert spec.deformation is not None  # on by default
        ph, lab = voxelize(spec)
        labels = set(torch.unique(lab).tolist())
        assert labels <= {0, 1, 2, 3} and 1 in labels
        assert torch.all(ph[lab == 0] == 0)
        # as specified (undeformed): each cell's organelles inside its body
        flat = dataclasses.replace(spec, deformation=None)
        bodies = _cell_body_masks(flat)
        for cell, body in zip(flat.cells, bodies):
            organelles = _organelle_mask(flat, cell)
            assert not np.any(organelles & ~body), "organelle voxels outside their cell body"
        assert not np.any((voxelize(flat)[1].numpy() >= 2) & ~np.any(bodies, axis=0))
        # deformed: one field moves bodies and organelles together, so containment survives it
        bare = dataclasses.replace(spec, cells=tuple(
            dataclasses.replace(c, wall_width=0.0, vacuoles=(), droplets=(), nucleus=None) for c in spec.cells))
        deformed_bodies = voxelize(bare)[1].numpy() == 1
        assert not np.any((lab.numpy() >= 2) & ~deformed_bodies)


def test_deterministic_json_round_trip_and_threads() -> None:
    spec = sample_phantom(PhantomConfig(), (64, 64, 64), np.random.default_rng(11))
    ph, lab = voxelize(spec)
    back = PhantomSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    ph2, lab2 = voxelize(back, device="cpu")
    assert ph.numpy().tobytes() == ph2.numpy().tobytes() and lab.numpy().tobytes() == lab2.numpy().tobytes()
    again = sample_phantom(PhantomConfig(), (64, 64, 64), np.random.default_rng(11))
    assert voxelize(again)[0].numpy().tobytes() == ph.numpy().tobytes()
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            p, l = voxelize(spec)
            outs.append((p.numpy().tobytes(), l.numpy().tobytes()))
        assert outs[0] == outs[1]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    spec = sample_phantom(PhantomConfig(), (64, 64, 64), np.random.default_rng(5))
    ph, lab = voxelize(spec)
    phc, labc = voxelize(spec, device="cuda")
    assert torch.equal(ph, phc.cpu()) and torch.equal(lab, labc.cpu())
