"""Partial-volume anti-aliasing: boundary voxels get the mean LAC of k³ sub-samples.

Called by :func:`simaq_factory.phantom.voxelization.voxelize` after the voxel-centre pass, which also
marked a ``boundary`` mask (bool (Z, Y, X)): every voxel whose cube [x − ½, x + ½]³ may be crossed
by some object's surface (|√level − 1| ≤ δ, δ a rigorous bound on how much √level changes inside
one cube, deformation included). All other voxels are uniform, so their centre value is exact.

For the M boundary voxels a buffer S (M, k³) float32 holds the scene value at every sub-sample
(offsets (j + ½)/k − ½ per axis). Objects are replayed in paint order, each only on the boundary
voxels inside its bounding box (found by ``searchsorted`` in the sorted voxel list): voxels whose
whole cube is inside get the value everywhere, voxels it cannot reach are skipped, the rest are
sub-sampled at x' + u(x'). The voxel value is the fixed-order sum of its k³ sub-samples / k³ (float64 sum, so a uniform voxel keeps its exact value), so
layered structures (a thin wall under its body, a droplet in a vacuole) are exact to the sampling,
not approximated by blending. Memory: M·k³ floats plus chunks of ``_CHUNK`` sub-sample points.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from simaq_factory.device import true_div
from simaq_factory.phantom.deform import DisplacementField
from simaq_factory.phantom.voxelization import _BAND_EPS, Box, PaintObject, boundary_delta

__all__ = ["antialias", "subsample_offsets"]

_CHUNK = 1 << 20  # sub-sample points evaluated per batch


def subsample_offsets(k: int, device: torch.device) -> torch.Tensor:
    """(k³, 3) float32 offsets (z, y, x) of the sub-sample centres within a unit voxel."""
    o = true_div(torch.arange(k, dtype=torch.float64) + 0.5, k) - 0.5
    grid = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), dim=-1).reshape(-1, 3)
    return grid.to(device=device, dtype=torch.float32)


def _deformed(pts: torch.Tensor, field: DisplacementField | None) -> torch.Tensor:
    """p = pts + u(pts) for points (N, 3) float32."""
    return pts if field is None else pts + field.at_points(pts)


def _level_of(p: torch.Tensor, obj: PaintObject) -> torch.Tensor:
    """Level Σ((p − c)/r)² over the last axis of deformed points ``p`` (..., 3) → (...) float32."""
    out = None
    for a in range(3):
        d = true_div(p[..., a] - obj.center[a], obj.radii[a])
        out = d * d if out is None else out + d * d
    assert out is not None
    return out


def _sum_is_exact(lacs: list[float], kk: int) -> bool:
    """Whether every float64 sum of up to ``kk`` of these float32 values (and zeros) is exact.

    A float32 ``v = m·2^e`` (0.5 ≤ m < 1, 24-bit m) is a multiple of ``2^(e − 24)``, and ``kk``
    values below ``2^emax`` sum below ``2^(emax + log2 kk)``: with ``emax − emin + 24 + log2 kk ≤ 53``
    every partial sum is representable, so any summation order gives the same bits.
    """
    values = [float(np.float32(v)) for v in lacs]
    if not all(math.isfinite(v) for v in values):
        return False
    exps = [math.frexp(v)[1] for v in values if v != 0.0]
    return not exps or max(exps) - min(exps) + 24 + math.ceil(math.log2(max(kk, 1))) <= 53


def antialias(
    phantom: torch.Tensor,
    boundary: torch.Tensor,
    groups: list[list[tuple[PaintObject, Box]]],
    field: DisplacementField | None,
    k: int,
) -> None:
    """Replace ``phantom`` at the ``boundary`` voxels by their k³ sub-sample mean, in place.

    Works in chunks of boundary voxels (sorted by linear index, i.e. z-slabs): the deformed
    sub-sample positions of a chunk are computed once, then every object whose box meets the
    chunk is replayed on the chunk's voxels inside its box.
    """
    device = phantom.device
    nz, ny, nx = phantom.shape
    lin_all = torch.nonzero(boundary.reshape(-1)).squeeze(1)  # sorted ascending
    if lin_all.numel() == 0:
        return
    kk = k**3
    offsets = subsample_offsets(k, device)
    deltas = [[boundary_delta(obj, field) + _BAND_EPS for obj, _ in items] for items in groups]
    rows = max(1, _CHUNK // kk)
    flat = phantom.view(-1)
    one_sum = _sum_is_exact([obj.value for items in groups for obj, _ in items], kk)
    for start in range(0, int(lin_all.numel()), rows):
        lin = lin_all[start : start + rows]
        idx = torch.stack([lin // (ny * nx), (lin // nx) % ny, lin % nx], dim=1)
        cen = idx.to(torch.float32)
        p_cen = _deformed(cen, field)
        p_sub = _deformed((cen[:, None, :] + offsets[None]).reshape(-1, 3), field).reshape(-1, kk, 3)
        values = torch.zeros((int(lin.numel()), kk), dtype=torch.float32, device=device)
        zmin, zmax = int(idx[0, 0]), int(idx[-1, 0])
        for items, dl in zip(groups, deltas):
            for (obj, box), delta in zip(items, dl):
                (z0, y0, x0), (z1, y1, x1) = box
                if z1 <= zmin or z0 > zmax:
                    continue
                lo = torch.tensor([z0, y0, x0], device=device)
                hi = torch.tensor([z1, y1, x1], device=device)
                sel = torch.nonzero(torch.all((idx >= lo) & (idx < hi), dim=1)).squeeze(1)
                if sel.numel() == 0:
                    continue
                s = torch.sqrt(_level_of(p_cen[sel], obj))
                full = s <= 1.0 - delta
                part = (~full) & (s <= 1.0 + delta)
                if bool(full.any()):
                    values[sel[full]] = obj.value
                rp = sel[part]
                if rp.numel():
                    inside = _level_of(p_sub[rp], obj) <= 1.0
                    values[rp] = torch.where(inside, torch.full_like(values[rp], obj.value), values[rp])
        # float64 sums that are exact (so independent of order, threads and device): one reduction
        # when the LACs allow it (_sum_is_exact), else a fixed-order sum, one sub-sample at a time
        if one_sum:
            acc = values.to(torch.float64).sum(dim=1)
        else:
            acc = values[:, 0].to(torch.float64)
            for j in range(1, kk):
                acc = acc + values[:, j].to(torch.float64)
        flat[lin] = true_div(acc, float(kk)).to(torch.float32)
