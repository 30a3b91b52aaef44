"""Ice cracks (reference §2.4): the region-competition generator and the per-sample assembly."""

from __future__ import annotations

import heapq
import json
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from simaq_factory.artifacts import (
    ArtifactsConfig,
    BanksConfig,
    BlurConfig,
    FiducialsConfig,
    IceCracksConfig,
    PerlinTextureConfig,
    apply_artifacts,
    memory_banks,
    sample_artifacts,
)
from simaq_factory.artifacts.assemble import crack_field, place, sample_placement
from simaq_factory.artifacts.config import CrackBankConfig, PerlinHiBankConfig, PerlinLoBankConfig
from simaq_factory.artifacts.cracks import cost_field, crack_blocks, crack_voxels, region_labels
from simaq_factory.artifacts.stage import background_mask
from simaq_factory.recipe.fields import Dist

CPU = torch.device("cpu")
GEN = dict(cost_sigma=2.0, cost_contrast=1.0, speed_spread=0.3, blur_sigma=0.0, neighbourhood=26,
           device=CPU)


def _labels_and_cracks(size: int = 32, seeds: int = 10, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    noise = torch.from_numpy(rng.standard_normal((n, size, size, size), dtype=np.float32))
    cost = cost_field(noise, 2.0, 1.0)
    pos = torch.from_numpy(np.stack([
        np.stack(np.unravel_index(rng.choice(size**3, seeds, replace=False), (size,) * 3), -1)
        for _ in range(n)]))
    inv = torch.from_numpy(np.exp(0.3 * rng.standard_normal((n, seeds)))).float()
    labels = region_labels(cost, pos, inv)
    return labels.numpy(), crack_voxels(labels).numpy()


def _touching(lab: np.ndarray, other: int) -> np.ndarray:
    """Voxels with a 6-neighbour labelled ``other``."""
    padded = np.pad(lab, 1, mode="constant", constant_values=-1)
    out = np.zeros(lab.shape, dtype=bool)
    for axis in range(3):
        for step in (-1, 1):
            out |= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1] == other
    return out


def test_crack_volumes_are_thin_connected_surfaces() -> None:
    labels, cracks = _labels_and_cracks()
    six = ndi.generate_binary_structure(3, 1)
    cube = np.ones((3, 3, 3))
    for lab, crack in zip(labels, cracks):
        assert set(np.unique(lab)) == set(range(10))  # every region grew, every voxel reached
        for k in range(10):  # each region is connected: it grew from its seed
            assert ndi.label(lab == k, structure=cube)[1] == 1
        # thin: a small fraction of the volume, and one-voxel sheets vanish under a 6-erosion
        assert 0.02 < crack.mean() < 0.2
        assert ndi.binary_erosion(crack, six).sum() <= 0.01 * crack.sum()
        # every crack voxel lies on a wall: a 6-neighbour carries a higher label
        walls = np.zeros_like(crack)
        for a in range(10):
            for b in range(a + 1, 10):
                wall = (lab == a) & _touching(lab, b)
                walls |= wall
                if wall.sum() >= 50:  # each wall between two regions is one connected surface
                    comp, _ = ndi.label(wall, structure=cube)
                    assert np.bincount(comp.ravel())[1:].max() >= 0.85 * wall.sum()
        assert np.array_equal(walls, crack)
    # the walls of a block join into one network (few, large pieces; no dust)
    blocks = crack_blocks([np.random.default_rng(s) for s in range(4)], 32, seeds=10,
                          wall_fraction=1.0, **GEN).numpy() > 0
    largest = []
    for crack in blocks:
        sizes = np.bincount(ndi.label(crack, structure=cube)[0].ravel())[1:]
        largest.append(sizes.max() / crack.sum())
        assert sizes[sizes >= 50].sum() >= 0.98 * crack.sum()
    assert np.median(largest) >= 0.9, largest


def _dijkstra(cost: np.ndarray, seeds: np.ndarray, inv: np.ndarray, neighbourhood: int = 26) -> np.ndarray:
    """Oracle: region growth on the 26- (18-, 6-) neighbour graph, w(u, v) = ½(c_u + c_v)·|u − v| / speed."""
    n = cost.shape[0]
    t = np.full(cost.shape, np.inf)
    lab = np.full(cost.shape, -1)
    heap = [(0.0, k, tuple(int(v) for v in s)) for k, s in enumerate(seeds)]
    for _, k, s in heap:
        t[s] = 0.0
    heapq.heapify(heap)
    done = np.zeros(cost.shape, dtype=bool)
    steps = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if 0 < abs(dz) + abs(dy) + abs(dx) <= {6: 1, 18: 2, 26: 3}[neighbourhood]]
    while heap:
        tu, k, u = heapq.heappop(heap)
        if done[u]:
            continue
        done[u], lab[u] = True, k
        for d in steps:
            v = (u[0] + d[0], u[1] + d[1], u[2] + d[2])
            if min(v) < 0 or max(v) >= n or done[v]:
                continue
            tv = tu + 0.5 * (cost[u] + cost[v]) * math.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) * inv[k]
            if tv < t[v]:
                t[v] = tv
                heapq.heappush(heap, (tv, k, v))
    return lab


def test_region_competition_matches_a_dijkstra_oracle() -> None:
    rng = np.random.default_rng(11)
    size, k = 10, 5
    cost = cost_field(torch.from_numpy(rng.standard_normal((1, size, size, size), dtype=np.float32)), 1.5, 1.0)
    seeds = np.stack(np.unravel_index(rng.choice(size**3, k, replace=False), (size,) * 3), -1)
    inv = np.exp(0.3 * rng.standard_normal(k)).astype(np.float32)
    ours = region_labels(cost, torch.from_numpy(seeds)[None], torch.from_numpy(inv)[None])[0].numpy()
    oracle = _dijkstra(cost[0].double().numpy(), seeds, inv.astype(np.float64))
    assert (ours == oracle).mean() > 0.99


def test_crack_blocks_deterministic_and_independent_of_threads_and_batch() -> None:
    def blocks(seeds: list[int], size: int = 24) -> torch.Tensor:
        return crack_blocks([np.random.default_rng(s) for s in seeds], size, seeds=8, wall_fraction=1.0, **GEN)

    a = blocks([1, 2])
    assert a.dtype == torch.float32 and a.shape == (2, 24, 24, 24)
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0
    assert torch.equal(a, blocks([1, 2]))
    assert torch.equal(a[1], blocks([2])[0])  # a block depends on its own generator only
    # one round of sweeps on slices big enough for torch to split the work over threads
    rng = np.random.default_rng(3)
    n, size = 4, 48
    cost = cost_field(torch.from_numpy(rng.standard_normal((n, size, size, size), dtype=np.float32)), 2.0, 1.0)
    pos = torch.from_numpy(rng.integers(0, size, (n, 6, 3)))
    inv = torch.ones((n, 6))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = region_labels(cost, pos, inv, max_rounds=1)
        torch.set_num_threads(2)
        two = region_labels(cost, pos, inv, max_rounds=1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_wall_fraction_opens_the_network() -> None:
    rngs = lambda: [np.random.default_rng(4)]  # noqa: E731
    full = crack_blocks(rngs(), 24, seeds=12, wall_fraction=1.0, **GEN)[0]
    part = crack_blocks(rngs(), 24, seeds=12, wall_fraction=0.4, **GEN)[0]
    assert 0 < part.sum() < full.sum()
    assert torch.all(part <= full)  # the same regions, fewer walls


def test_placement_orients_crops_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    bank = torch.from_numpy(rng.random((3, 8, 8, 8), dtype=np.float32))
    for _ in range(20):
        p = sample_placement(rng, 3, 8, (8, 8, 8), 1.0)
        assert sorted(p["perm"]) == [0, 1, 2] and p["box_size"] == [8, 8, 8] and p["box_start"] == [0, 0, 0]
        p = json.loads(json.dumps(p))
        expect = np.transpose(bank[p["entry"]].numpy(), p["perm"])
        expect = np.flip(expect, [d for d, f in enumerate(p["flip"]) if f])
        np.testing.assert_array_equal(place(bank, p, (8, 8, 8)).numpy(), expect)
    # a crop keeps the volume's aspect and stays inside the cube
    p = sample_placement(rng, 3, 32, (16, 64, 64), 0.75)
    assert p["box_size"] == [6, 24, 24]  # 0.75 · 32 · (16, 64, 64) / 64
    assert all(0 <= s <= 32 - n for s, n in zip(p["box_start"], p["box_size"]))
    assert place(torch.zeros((3, 32, 32, 32)), p, (16, 64, 64)).shape == (16, 64, 64)


def _sphere(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    z, y, x = torch.meshgrid(*(torch.arange(n),) * 3, indexing="ij")
    labels = (((z - n / 2) ** 2 + (y - n / 2) ** 2 + (x - n / 2) ** 2) < (n / 4) ** 2).to(torch.uint8)
    return labels.float() * 0.346, labels


CRACKS_ONLY = ArtifactsConfig(
    blur=BlurConfig(probability=0.0),
    fiducials=FiducialsConfig(enabled=False),
    perlin=PerlinTextureConfig(enabled=False),
    ice_cracks=IceCracksConfig(amplitude=Dist.const(0.2), seeds=8),
    banks=BanksConfig(
        perlin_lo_3d=PerlinLoBankConfig(entries=2, edge=8),
        perlin_hi_3d=PerlinHiBankConfig(entries=1, edge=16, res=4, octaves=1),
        cracks=CrackBankConfig(entries=3, edge=16),
    ),
)


def test_cracks_only_on_background_and_regenerate_from_recorded_choices() -> None:
    phantom, labels = _sphere()
    banks = memory_banks(CRACKS_ONLY, tuple(labels.shape), 3, CPU)
    assert banks["cracks"].shape == (3, 16, 16, 16)
    params = sample_artifacts(CRACKS_ONLY, labels.shape, labels, 0.3, np.random.default_rng(2))
    c = params["ice_cracks"]
    assert c["applied"] and c["amplitude"] == 0.2 and len(c["layers"]) == 2
    for layer in c["layers"]:
        assert sorted(layer["perm"]) == [0, 1, 2] and len(layer["flip"]) == 3
        assert layer["box_size"] == [12, 12, 12]
    noisy = apply_artifacts(phantom, labels, params, banks)
    diff = (noisy - phantom).numpy()
    cells = labels.numpy() > 0
    assert np.all(diff[cells] == 0)  # cracks never add to cell voxels
    bg = background_mask(phantom, labels).numpy()
    assert np.all(diff[~bg] == 0) and diff.min() >= 0 and diff.max() <= 0.2 + 1e-6
    assert (diff[bg] > 0.05).mean() > 0.01
    # the recorded choices (JSON) regenerate the same bytes; other choices give another field
    again = apply_artifacts(phantom, labels, json.loads(json.dumps(params)), banks)
    assert noisy.numpy().tobytes() == again.numpy().tobytes()
    other = json.loads(json.dumps(params))
    other["ice_cracks"]["layers"][0]["flip"] = [not f for f in other["ice_cracks"]["layers"][0]["flip"]]
    assert not torch.equal(apply_artifacts(phantom, labels, other, banks), noisy)


def test_crack_field_is_the_max_of_layers_times_perlin_each_normalised() -> None:
    """Reference §2.4: each factor min–max normalised, then their product (not normalised again)."""
    rng = np.random.default_rng(1)
    cracks = torch.from_numpy((rng.random((2, 8, 8, 8)) < 0.1).astype(np.float32))
    lo = torch.from_numpy(0.2 + 0.5 * rng.random((1, 8, 8, 8), dtype=np.float32))  # spans [0.2, 0.7]
    ident = {"entry": 0, "perm": [0, 1, 2], "flip": [False] * 3, "box_start": [0] * 3, "box_size": [8] * 3}
    second = {**ident, "entry": 1}
    field = crack_field(cracks, lo, [ident, second], ident, (8, 8, 8))
    perlin = (lo[0] - lo.min()) / (lo.max() - lo.min())
    torch.testing.assert_close(field, torch.maximum(cracks[0], cracks[1]) * perlin)
    assert float(field.max()) < 1.0  # the Perlin peak is off every crack here: no renormalisation
    assert torch.equal(cracks[0], torch.from_numpy((np.random.default_rng(1).random((2, 8, 8, 8)) < 0.1)
                                                   .astype(np.float32))[0])  # bank untouched


def test_smaller_neighbourhoods_match_their_dijkstra_oracles() -> None:
    """The 18- and 6-neighbour graphs (step sets |d|₁ ≤ 2 and ≤ 1) agree with a Dijkstra oracle on
    the same graph to the standard of the 26-neighbour test, and the three labellings differ."""
    rng = np.random.default_rng(11)
    size, k = 10, 5
    cost = cost_field(torch.from_numpy(rng.standard_normal((1, size, size, size), dtype=np.float32)), 1.5, 1.0)
    seeds = np.stack(np.unravel_index(rng.choice(size**3, k, replace=False), (size,) * 3), -1)
    inv = np.exp(0.3 * rng.standard_normal(k)).astype(np.float32)
    ours = {}
    for nb in (6, 18, 26):
        ours[nb] = region_labels(cost, torch.from_numpy(seeds)[None], torch.from_numpy(inv)[None],
                                 neighbourhood=nb)[0].numpy()
        oracle = _dijkstra(cost[0].double().numpy(), seeds, inv.astype(np.float64), nb)
        assert (ours[nb] == oracle).mean() > 0.99, nb
    assert (ours[18] == ours[26]).mean() < 0.97 and (ours[6] == ours[18]).mean() < 0.97


def test_cost_field_log_is_standard_normal_times_the_contrast() -> None:
    """log c = contrast · n with n the smoothed noise divided by its theoretical std (Σ k²)^{3/2}:
    away from the replicated borders n has mean ≈ 0 and std ≈ 1, and the contrast scales it."""
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.standard_normal((2, 48, 48, 48), dtype=np.float32))
    log1 = torch.log(cost_field(noise, 2.0, 1.0)).double()
    inner = log1[:, 6:-6, 6:-6, 6:-6]  # the kernel radius ceil(3σ) = 6 from the borders
    assert abs(float(inner.mean())) < 0.1 and float(inner.std()) == pytest.approx(1.0, rel=0.06)
    log_half = torch.log(cost_field(noise, 2.0, 0.5)).double()
    torch.testing.assert_close(log_half, 0.5 * log1, rtol=1e-5, atol=1e-5)
    # no smoothing: the noise itself
    torch.testing.assert_close(torch.log(cost_field(noise, 0.0, 0.7)), 0.7 * noise, rtol=1e-5, atol=1e-5)
