"""Paint a :class:`PhantomSpec` into a LAC volume and a label volume (reference §1.10).

Volumes are (Z, Y, X) = (axis 0 tilt axis, axis 1 beam at 0°, axis 2 detector). A voxel with
integer index (i, j, k) lies inside an ellipsoid (centre c, radii r, voxel units) iff
((i − c₀)/r₀)² + ((j − c₁)/r₁)² + ((k − c₂)/r₂)² ≤ 1 (each term in float64, rounded to
float32, summed in float32 in that order — identical on CPU and CUDA). Each object writes
only into its bounding box (per axis ``max(floor(c − r), 0) … min(ceil(c + r) + 1, n)``),
directly on ``device``; no full-volume temporary is made. Paint order (later overwrites earlier):
every cell's wall shell (outer ellipsoid) then its body, then all vacuoles/fragments, then all
lipid droplets. Background is 0 in both outputs. Deterministic; no randomness.
"""

from __future__ import annotations

import math

import torch

from simaq_factory.labels import Label
from simaq_factory.phantom.spec import PhantomSpec

__all__ = ["voxelize", "paint_ellipsoid"]


def paint_ellipsoid(
    phantom: torch.Tensor,
    labels: torch.Tensor,
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
    value: float,
    label: int,
) -> None:
    """Write ``value`` into ``phantom`` and ``label`` into ``labels`` inside one ellipsoid, in place.

    ``phantom`` float32 (Z, Y, X) and ``labels`` uint8 (Z, Y, X) share device and shape.
    """
    if min(radii) <= 0:
        return
    device = phantom.device
    sq = []
    slices = []
    for c, r, n in zip(center, radii, phantom.shape):
        lo = max(math.floor(c - r), 0)
        hi = min(math.ceil(c + r) + 1, n)
        if hi <= lo:
            return
        idx = torch.arange(lo, hi, device=device, dtype=torch.float64)
        sq.append((((idx - c) / r) ** 2).to(torch.float32))
        slices.append(slice(lo, hi))
    inside = ((sq[0][:, None] + sq[1][None, :])[:, :, None] + sq[2][None, None, :]) <= 1.0
    phantom[slices[0], slices[1], slices[2]].masked_fill_(inside, value)
    labels[slices[0], slices[1], slices[2]].masked_fill_(inside, label)


def voxelize(
    spec: PhantomSpec, shape: tuple[int, int, int] | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``spec`` → (phantom float32 (Z, Y, X) LAC, labels uint8 (Z, Y, X) in {0, 1, 2, 3}).

    ``shape`` defaults to ``spec.shape``; a different shape clips objects at the volume border
    (coordinates are not rescaled).
    """
    shape = tuple(spec.shape) if shape is None else tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {shape!r}")
    device = torch.device(device)
    phantom = torch.zeros(shape, dtype=torch.float32, device=device)
    labels = torch.zeros(shape, dtype=torch.uint8, device=device)
    for cell in spec.cells:
        paint_ellipsoid(phantom, labels, cell.center, cell.outer_radii, cell.wall_lac, int(Label.CELL))
        paint_ellipsoid(phantom, labels, cell.center, cell.radii, cell.lac, int(Label.CELL))
    for cell in spec.cells:
        for vac in cell.vacuoles:
            paint_ellipsoid(phantom, labels, vac.center, vac.radii, vac.lac, int(Label.VACUOLE))
    for cell in spec.cells:
        for drop in cell.droplets:
            paint_ellipsoid(phantom, labels, drop.center, drop.radii, drop.lac, int(Label.LIPID_DROPLET))
    return phantom, labels
