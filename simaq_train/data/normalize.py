"""Deterministic intensity normalisation (design §5; fixes reference §8.3 bugs 18, 21, 24).

Inside the valid field of view — a cylinder along the tilt axis (axis 0) of radius
``min(H, W) / 2 - margin`` voxels around the in-plane centre — every voxel is replaced by the
standard-normal quantile of its rank: ``ndtri((r + 0.5) / n)`` with ``r`` the mid-rank of its tie
group (equal values get equal outputs, whatever the sort order), ``n`` the number of voxels in the
field of view. Outside the field of view the output is 0. Computed in float64, returned float32.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_MARGIN = 5.0


def fov_mask(shape_yx: tuple[int, int], margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Boolean (H, W) disc: distance from ((H-1)/2, (W-1)/2) <= min(H, W)/2 - margin."""
    h, w = shape_yx
    radius = min(h, w) / 2.0 - margin
    if radius <= 0:
        raise ValueError(f"field of view radius {radius} <= 0 for in-plane shape {shape_yx}")
    yy = np.arange(h, dtype=np.float64)[:, None] - (h - 1) / 2.0
    xx = np.arange(w, dtype=np.float64)[None, :] - (w - 1) / 2.0
    return (yy * yy + xx * xx) <= radius * radius


def quantile_normalize(volume: np.ndarray, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Rank → standard-normal quantile inside the FOV cylinder, 0 outside.

    volume: (Z, H, W) any real dtype (float16, integer TIFFs …). Returns float32 (Z, H, W).
    NaNs inside the field of view rank above every finite value.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a (Z, H, W) volume, got shape {volume.shape}")
    disc = fov_mask(volume.shape[1:], margin)
    out = np.zeros(volume.shape, dtype=np.float32)
    inside = torch.from_numpy(np.ascontiguousarray(volume[:, disc]).astype(np.float64).ravel())
    n = inside.numel()
    if n == 0:
        return out
    _, inverse, counts = torch.unique(inside, sorted=True, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    mid_rank = starts.to(torch.float64) + (counts.to(torch.float64) - 1.0) / 2.0
    q = torch.special.ndtri((mid_rank + 0.5) / n)
    values = q[inverse].to(torch.float32).numpy()
    out[:, disc] = values.reshape(volume.shape[0], -1)
    return out
