"""Fiducial gold beads: placement by rejection sampling, then painting (reference §2.3, bug 11).

The reference picked bead centres among all background coordinates (materialising ~10⁸ indices),
used one fixed radius and LAC, and let beads paint over cells. Here radius and LAC are drawn per bead,
centres are continuous positions drawn uniformly in the volume and accepted only when no labelled
voxel (labels ≠ 0, i.e. the cell mask; 255 counts as labelled) lies within ``radius + 1`` voxels of
the centre — the bead sphere never touches the cell mask dilated by one voxel — and the bead does not
overlap an earlier bead. Candidates are tested in batches with one gather on the labels' device, so
a CUDA run synchronises once per batch.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from simaq_factory.artifacts.config import FiducialsConfig

logger = logging.getLogger(__name__)

__all__ = ["sample_fiducials", "paint_beads"]

_BATCH = 64


def _clearance(labels: torch.Tensor, centres: np.ndarray, reach: float) -> np.ndarray:
    """Distance from each centre (B, 3; voxel coords z, y, x) to the nearest labelled voxel.

    Only voxels within ``reach`` of a centre are examined; ``inf`` means none within ``reach``.
    Voxels outside the volume do not count.
    """
    device = labels.device
    h = int(math.ceil(reach + 0.5))
    ax = torch.arange(-h, h + 1, device=device)
    offsets = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)
    c = torch.from_numpy(centres).to(device=device, dtype=torch.float64)  # (B, 3)
    base = torch.round(c).to(torch.int64)
    vox = base[:, None, :] + offsets[None, :, :]  # (B, M, 3)
    dims = torch.tensor(labels.shape, device=device)
    inside = ((vox >= 0) & (vox < dims)).all(dim=-1)
    vc = torch.minimum(vox.clamp_min(0), dims - 1)
    flat = (vc[..., 0] * labels.shape[1] + vc[..., 1]) * labels.shape[2] + vc[..., 2]
    labelled = (labels.reshape(-1)[flat] != 0) & inside
    # explicit squares, sum and sqrt, each correctly rounded on CPU and CUDA alike (a library norm
    # may round differently per device and flip the acceptance of a bead at the threshold)
    d = vox.to(torch.float64) - c[:, None, :]
    sq = d * d
    dist = torch.sqrt((sq[..., 0] + sq[..., 1]) + sq[..., 2])
    dist = torch.where(labelled & (dist <= reach), dist, torch.full_like(dist, math.inf))
    return dist.amin(dim=1).cpu().numpy()


def sample_fiducials(
    cfg: FiducialsConfig, labels: torch.Tensor, voxels_per_unit: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Draw bead count, radii (voxels), LACs and accepted centres; returns JSON-able data.

    ``labels``: (Z, Y, X) uint8 on any device. Output: ``{"requested": n, "beads": [{"center_zyx":
    [z, y, x], "radius_vox": r, "lac": v}, ...]}``; fewer beads than requested when the
    background has no room within the candidate budget (logged).
    """
    if not cfg.enabled:
        return {"requested": 0, "beads": []}
    n = max(0, int(cfg.count.sample(rng)))
    radii = [float(cfg.radius.sample(rng)) * float(voxels_per_unit) for _ in range(n)]
    lacs = [float(cfg.lac.sample(rng)) for _ in range(n)]
    if n == 0:
        return {"requested": 0, "beads": []}
    shape = np.asarray(labels.shape, dtype=np.float64)
    reach = max(radii) + 1.0
    budget = n * cfg.max_candidates_per_bead
    beads: list[dict[str, Any]] = []
    i, used = 0, 0
    while i < n and used < budget:
        take = min(_BATCH, budget - used)
        centres = rng.uniform(0.0, 1.0, size=(take, 3)) * shape - 0.5  # uniform over voxel cells
        clear = _clearance(labels, centres, reach)
        for j in range(take):
            used += 1
            r = radii[i]
            if not clear[j] > r + 1.0:
                continue
            c = centres[j]
            if any(np.linalg.norm(c - b["center_zyx"]) <= r + b["radius_vox"] + 1.0 for b in beads):
                continue
            beads.append({"center_zyx": c.copy(), "radius_vox": r, "lac": lacs[i]})
            i += 1
            if i == n:
                break
    if i < n:
        logger.warning("placed %d of %d fiducial beads: background too small or crowded", i, n)
    for b in beads:
        b["center_zyx"] = [float(v) for v in b["center_zyx"]]
    return {"requested": n, "beads": beads}


def paint_beads(volume: torch.Tensor, beads: list[dict[str, Any]]) -> torch.Tensor:
    """Set voxels within each bead's radius of its centre to its LAC, in place; returns ``volume``.

    ``volume``: (Z, Y, X) float32. A voxel v belongs to a bead when ‖v − centre‖ ≤ radius.
    """
    for b in beads:
        c = [float(v) for v in b["center_zyx"]]
        r = float(b["radius_vox"])
        lo = [max(0, int(math.floor(ci - r))) for ci in c]
        hi = [min(s, int(math.ceil(ci + r)) + 1) for ci, s in zip(c, volume.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        axes = [
            torch.arange(l, h, dtype=torch.float64, device=volume.device) - ci
            for l, h, ci in zip(lo, hi, c)
        ]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        block = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        block.masked_fill_(d2 <= r * r, float(b["lac"]))
    return volume
