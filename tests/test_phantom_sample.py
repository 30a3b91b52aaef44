"""Sampling of phantom specs: invariants over many seeds, statistics, determinism, JSON, config."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest

from simaq_factory.phantom.config import PhantomConfig
from simaq_factory.phantom.geometry import ellipsoid_inside, ellipsoids_overlap
from simaq_factory.phantom.sample import PhantomFitError, sample_cell, sample_phantom
from simaq_factory.phantom.spec import SCHEMA_VERSION, CellSpec, PhantomSpec
from simaq_factory.recipe.fields import Dist
from simaq_factory.recipe.schema import parse_section, section_to_json

SHAPE = (512, 512, 512)


def _with_cells(cfg: PhantomConfig, count: Dist) -> PhantomConfig:
    return dataclasses.replace(cfg, cells=dataclasses.replace(cfg.cells, count=count))


def _arr(x: object) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _check_cell(cell: CellSpec, scale: float, tol: float) -> None:
    cc, cr = _arr(cell.center), _arr(cell.radii)
    vc = np.array([v.center for v in cell.vacuoles]).reshape(-1, 3)
    vr = np.array([v.radii for v in cell.vacuoles]).reshape(-1, 3)
    cl = np.array([v.cluster for v in cell.vacuoles], dtype=int)
    if len(vc):
        # Vacuoles and fragments within 0.95 of the cell radii.
        assert np.all(ellipsoid_inside(vc, vr, cc, 0.95 * cr, margin=-1e-9))
        over = ellipsoids_overlap(vc[:, None], vr[:, None], vc[None], vr[None])
        same = (cl[:, None] == cl[None]) & (cl[:, None] >= 0)
        np.fill_diagonal(over, False)
        assert not np.any(over & ~same), "vacuoles of different parents overlap"
        for c in set(cl[cl >= 0].tolist()):
            idx = np.flatnonzero(cl == c)
            d = np.linalg.norm(vc[idx, None] - vc[None, idx], axis=-1)
            rs = vr[idx, 0][:, None] + vr[idx, 0][None]
            iu = np.triu_indices(len(idx), 1)
            assert np.all(d[iu] >= rs[iu] - tol), "fragments of one cluster overlap"
            # Equal-size fragments: the large ones are mutually tangent (d = 2r); the medium ones
            # sit at d = 4r (reference table); anything else would mean a distorted cluster.
            r = vr[idx, 0]
            eq = np.abs(r[:, None] - r[None]) < tol
            ratio = d[iu][eq[iu]] / (2 * r[iu[0]][eq[iu]])
            assert np.all((np.abs(ratio - 1) < 1e-6) | (np.abs(ratio - 2) < 1e-6)), ratio
    dc = np.array([d.center for d in cell.droplets]).reshape(-1, 3)
    dr = np.array([d.radius for d in cell.droplets])
    conv = np.array([d.converted for d in cell.droplets], dtype=bool)
    if len(dc):
        assert np.all(ellipsoid_inside(dc, dr[:, None] * np.ones(3), cc, cr, margin=-1e-9))
        d = np.linalg.norm(dc[:, None] - dc[None], axis=-1)
        iu = np.triu_indices(len(dc), 1)
        assert np.all(d[iu] >= (dr[:, None] + dr[None])[iu] - tol), "droplets overlap"
        if len(vc):
            r3 = np.repeat(dr[:, None], 3, 1)
            over = ellipsoids_overlap(dc[:, None], r3[:, None], vc[None], vr[None])
            inside = ellipsoid_inside(dc[:, None], r3[:, None], vc[None], vr[None], margin=-1e-9)
            partial = over & ~inside
            # Converted droplets are tangent to their former cluster mates: allow touching only.
            if partial.any():
                a, b = np.nonzero(partial)
                dist = np.linalg.norm(dc[a] - vc[b], axis=1)
                assert np.all(conv[a]), "a sampled droplet partially overlaps a vacuole"
                assert np.all(dist >= dr[a] + vr[b, 0] - tol)


def check_spec(spec: PhantomSpec) -> None:
    """All geometric invariants of a sampled phantom (voxel coordinates)."""
    tol = 1e-7 * spec.scale * 100
    z, y, x = spec.shape
    radius = min(y, x) / 2 - 2
    axis = np.array([(y - 1) / 2, (x - 1) / 2])
    oc = np.array([c.center for c in spec.cells])
    orr = np.array([c.outer_radii for c in spec.cells])
    # Inside the z extent and the inscribed cylinder (conservative bound: centre distance + max radius).
    assert np.all(oc[:, 0] - orr[:, 0] >= -1e-9) and np.all(oc[:, 0] + orr[:, 0] <= z - 1 + 1e-9)
    assert np.all(np.linalg.norm(oc[:, 1:] - axis, axis=1) + orr[:, 1:].max(1) <= radius + 1e-9)
    over = ellipsoids_overlap(oc[:, None], orr[:, None], oc[None], orr[None])
    np.fill_diagonal(over, False)
    assert not over.any(), "cells overlap"
    for cell in spec.cells:
        _check_cell(cell, spec.scale, tol)


def _specs(n: int, shape: tuple[int, int, int] = SHAPE, cfg: PhantomConfig | None = None) -> Iterator[PhantomSpec]:
    cfg = cfg or PhantomConfig()
    for seed in range(n):
        yield sample_phantom(cfg, shape, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def many_specs() -> list[PhantomSpec]:
    """200 default phantoms at 512³ (sampling only; shared by the invariant and statistics tests)."""
    return list(_specs(200))


def test_invariants_over_many_seeds(many_specs: list[PhantomSpec]) -> None:
    n_frag = n_conv = 0
    for spec in many_specs:
        check_spec(spec)
        n_frag += sum(v.fragment for c in spec.cells for v in c.vacuoles)
        n_conv += sum(d.converted for c in spec.cells for d in c.droplets)
    assert n_frag > 50 and n_conv > 5  # the fragment/conversion paths were exercised


@pytest.mark.parametrize("n_cells", [1, 2, 3, 4, 5, 6])
def test_cells_never_overlap(n_cells: int) -> None:
    cfg = _with_cells(PhantomConfig(), Dist.const(n_cells))
    for spec in _specs(8, cfg=cfg):
        assert spec.n_cells == n_cells
        check_spec(spec)


def test_small_volume_keeps_proportions() -> None:
    for spec in _specs(25, shape=(64, 64, 64)):
        check_spec(spec)
        assert spec.scale <= 1.2 * 64 / 512 + 1e-12


def test_non_cubic_volume() -> None:
    for spec in _specs(20, shape=(96, 128, 112)):
        check_spec(spec)


def test_too_many_cells_shrink_or_raise() -> None:
    cfg = _with_cells(PhantomConfig(), Dist.const(14))
    auto = 1.2 * 64 / 512
    shrunk = 0
    for seed in range(2):
        spec = sample_phantom(cfg, (64, 64, 64), np.random.default_rng(seed))
        check_spec(spec)
        assert 0.5 * auto <= spec.scale <= auto
        shrunk += spec.scale < auto
    assert shrunk > 0
    strict = dataclasses.replace(cfg, layout=dataclasses.replace(cfg.layout, min_scale_fraction=0.99))
    with pytest.raises(PhantomFitError, match=r"do not fit a 64x64x64 \(z, y, x\) volume"):
        for seed in range(2):
            sample_phantom(strict, (64, 64, 64), np.random.default_rng(seed))


def test_layout_plane() -> None:
    centre = 255.5
    for spec in _specs(10, cfg=_with_cells(PhantomConfig(), Dist.const(3))):
        assert all(c.center[1] == centre for c in spec.cells)  # grid plane (z, x), no offset
    legacy = dataclasses.replace(PhantomConfig(), layout=dataclasses.replace(PhantomConfig().layout, plane="zy"))
    for spec in _specs(10, cfg=_with_cells(legacy, Dist.const(3))):
        assert all(c.center[2] == centre for c in spec.cells)
    off = dataclasses.replace(PhantomConfig(), layout=dataclasses.replace(PhantomConfig().layout, offset_std=10.0))
    spec = sample_phantom(_with_cells(off, Dist.const(3)), SHAPE, np.random.default_rng(0))
    check_spec(spec)
    assert any(c.center[1] != centre for c in spec.cells)


def test_statistics_match_the_distributions(many_specs: list[PhantomSpec]) -> None:
    cell_r, wall, lac, drop_r, n_drop, n_cells, vac_lac = [], [], [], [], [], [], []
    for spec in many_specs:
        n_cells.append(spec.n_cells)
        for c in spec.cells:
            cell_r.extend(np.asarray(c.radii) / spec.scale)
            wall.append(c.wall_width / spec.scale)
            lac.append(c.lac)
            n_drop.append(sum(not d.converted for d in c.droplets))
            drop_r.extend(d.radius / spec.scale for d in c.droplets if not d.converted)
            vac_lac.extend(v.lac for v in c.vacuoles)
    cell_r = np.array(cell_r)
    assert cell_r.min() >= 40 - 1e-9 and cell_r.max() <= 60 + 1e-9
    assert abs(cell_r.mean() - 50) < 0.3 and abs(cell_r.std() - 2.5) < 0.3
    assert min(wall) >= 1 - 1e-9 and max(wall) < 1.5 + 1e-9
    assert abs(np.mean(lac) - 0.346) < 0.005
    assert abs(np.mean(vac_lac) - 0.182) < 0.01
    drop_r = np.array(drop_r)
    assert drop_r.min() >= 5 - 1e-9 and drop_r.max() <= 8 + 1e-9
    expect = np.mean(np.clip(np.random.default_rng(99).normal(6, 1, 200_000), 5, 8))
    assert abs(drop_r.mean() - expect) < 0.1  # placement barely biases the size
    assert 10 < np.mean(n_drop) <= 14.5 + 1  # int(clip(N(15, 5), 3, 30)) minus rare failures
    counts = np.bincount(n_cells)
    expect_n = np.maximum(1, np.trunc(np.random.default_rng(98).normal(3, 2, 200_000))).mean()
    assert abs(np.mean(n_cells) - expect_n) < 0.35 and counts[0] == 0


def test_same_seed_same_spec_and_json_round_trip() -> None:
    a = sample_phantom(PhantomConfig(), (64, 64, 64), np.random.default_rng(7))
    b = sample_phantom(PhantomConfig(), (64, 64, 64), np.random.default_rng(7))
    c = sample_phantom(PhantomConfig(), (64, 64, 64), np.random.default_rng(8))
    assert a == b and a != c
    text = json.dumps(a.to_dict())
    back = PhantomSpec.from_dict(json.loads(text))
    assert back == a and back.schema_version == SCHEMA_VERSION
    with pytest.raises(ValueError):
        PhantomSpec.from_dict({**a.to_dict(), "schema_version": 999})


def test_config_parses_and_round_trips() -> None:
    cfg = parse_section(PhantomConfig, {"scale": 0.5, "cells": {"count": 2}, "layout": {"plane": "zy"}}, "phantom")
    assert cfg.resolved_scale((64, 64, 64)) == 0.5 and cfg.cells.count == Dist.const(2)
    assert PhantomConfig().resolved_scale((512, 512, 512)) == pytest.approx(1.2)
    again = parse_section(PhantomConfig, section_to_json(cfg), "phantom")
    assert again == cfg
    assert parse_section(PhantomConfig, section_to_json(PhantomConfig()), "phantom") == PhantomConfig()


def test_nucleus_invariants_and_statistics() -> None:
    """With the nucleus on: at most one per cell, inside 0.9 × its cell, clear of every vacuole and
    droplet, no larger than its drawn size, LAC following the recipe; off by default."""
    base = PhantomConfig()
    assert not base.nucleus.enabled
    assert all(c.nucleus is None for spec in _specs(5) for c in spec.cells)
    cfg = dataclasses.replace(base, nucleus=dataclasses.replace(base.nucleus, enabled=True))
    fractions, lacs, n_cells = [], [], 0
    for spec in _specs(30, cfg=cfg):
        check_spec(spec)
        for cell in spec.cells:
            n_cells += 1
            nuc = cell.nucleus
            if nuc is None:
                continue
            nc, nr = _arr(nuc.center), _arr(nuc.radii)
            assert ellipsoid_inside(nc[None], nr[None], _arr(cell.center), 0.9 * _arr(cell.radii), margin=-1e-9)[0]
            objs = [(v.center, v.radii) for v in cell.vacuoles] + [(d.center, (d.radius,) * 3) for d in cell.droplets]
            for c, r in objs:
                assert not ellipsoids_overlap(nc, nr, _arr(c), _arr(r)), "an organelle overlaps the nucleus"
            fractions.append(float(np.mean(nr / _arr(cell.radii))))
            lacs.append(nuc.lac)
    fractions, lacs = np.array(fractions), np.array(lacs)
    assert len(fractions) >= 0.7 * n_cells  # most cells have room beside their vacuoles
    assert 0.3 * 0.35 - 0.02 <= fractions.min() and fractions.max() <= 0.47 + 0.03  # shrunk, never grown
    assert (fractions > 0.33).mean() > 0.5
    assert lacs.min() >= 0.2 and lacs.max() <= 0.3 and abs(lacs.mean() - 0.25) < 0.015


def _vacuole_parents(cell) -> int:
    """Vacuoles placed in a cell before fragmentation: intact ones plus one per fragment cluster."""
    ids = cell.vac_cluster
    return sum(1 for c in ids if c == -1) + len({c for c in ids if c >= 0})


def test_the_nucleus_leaves_the_vacuoles_as_they_are() -> None:
    """The vacuoles are placed before the nucleus: for the same seed a cell draws and places the same
    vacuoles with or without it (fragments touching the nucleus may still be dropped)."""
    base = PhantomConfig()
    cfg = dataclasses.replace(base, nucleus=dataclasses.replace(base.nucleus, enabled=True))
    with_vac = [0, 0]
    for seed in range(60):
        a = sample_cell(base, np.random.default_rng(seed))
        b = sample_cell(cfg, np.random.default_rng(seed))
        assert _vacuole_parents(a) == _vacuole_parents(b)
        intact_a = [tuple(c) for c, k in zip(a.vac_c, a.vac_cluster) if k == -1]
        intact_b = [tuple(c) for c, k in zip(b.vac_c, b.vac_cluster) if k == -1]
        assert intact_a == intact_b
        with_vac[0] += bool(a.vac_c)
        with_vac[1] += bool(b.vac_c)
    assert with_vac[1] >= 0.9 * with_vac[0] > 0


def test_cells_get_the_vacuole_count_they_draw() -> None:
    """Bug 8 fixed: the reference's radius clamp at 25 made every vacuole of a cell that drew k >= 2 a
    sphere of radius 25, two of which never fit, so no cell had two; at 15 the k vacuoles fit."""
    fixed, reference = PhantomConfig(), PhantomConfig()
    reference = dataclasses.replace(reference, vacuole=dataclasses.replace(reference.vacuole, radius_min=25.0))
    n_fixed = np.array([_vacuole_parents(sample_cell(fixed, np.random.default_rng(s))) for s in range(150)])
    n_ref = np.array([_vacuole_parents(sample_cell(reference, np.random.default_rng(s))) for s in range(150)])
    assert n_ref.max() == 1  # the reference's outcome, reproduced by radius_min: 25
    assert (n_fixed >= 2).mean() > 0.3 and n_fixed.max() == 4


def test_the_layout_does_not_depend_on_the_cpus_blas_kernel() -> None:
    """Phantom specs are the same bytes under different OpenBLAS kernels (worker machines with other
    CPUs): the layout uses no matrix product, whose summation order depends on the kernel."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, json, logging; import numpy as np; logging.disable(logging.WARNING)\n"
            "from simaq_factory.phantom.config import PhantomConfig\n"
            "from simaq_factory.phantom.sample import sample_phantom\n"
            "h = hashlib.sha256()\n"
            "for s in range(15):\n"
            "    sp = sample_phantom(PhantomConfig(), (512, 512, 512), np.random.default_rng(s))\n"
            "    h.update(json.dumps(sp.to_dict(), sort_keys=True).encode())\n"
            "print(h.hexdigest())\n")
    digests = set()
    for core in ("Prescott", "Haswell"):  # OpenBLAS's oldest x86-64 kernel and an AVX2 one
        env = {**os.environ, "OPENBLAS_CORETYPE": core}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        digests.add(r.stdout.strip())
    assert len(digests) == 1
