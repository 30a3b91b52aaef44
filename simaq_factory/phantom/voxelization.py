"""Paint a :class:`PhantomSpec` into a LAC volume and a label volume (reference §1.10–1.11).

Volumes are (Z, Y, X) = (axis 0 tilt axis, axis 1 beam at 0°, axis 2 detector). A voxel with
integer index x lies inside an ellipsoid (centre c, radii r, voxel units) iff
Σᵢ((pᵢ − cᵢ)/rᵢ)² ≤ 1 at p = x + u(x), where u is the spec's displacement field (:mod:`.deform`;
u ≡ 0 without deformation). Deforming the *sampling point* keeps phantom and labels consistent by
construction: labels are class ids only, label > 0 ⇔ phantom > 0 (without anti-aliasing).

Without deformation each per-axis term is computed in float64, rounded to float32 and summed in
float32 (identical on CPU and CUDA, as before); with deformation the terms are float32 elementwise
ops on the deformed coordinates. Each object writes only into its bounding box (per axis
``max(floor(c − r − m), 0) … min(ceil(c + r + m) + 1, n)``, m = max |u| along that axis) on
``device``; the field is evaluated once per cell on the union of its objects' boxes.

Paint order (later overwrites earlier), cell by cell: wall shell (outer ellipsoid), body, nucleus,
vacuoles/fragments, lipid droplets. Cells never overlap in sampled specs, so this equals the
reference's global order (all cells, then all vacuoles, then all droplets).

With ``spec.supersample = k > 1`` voxels crossed by an object boundary get the mean LAC of k³
sub-samples (:mod:`.antialias`); labels stay by voxel centre. Deterministic; no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from simaq_factory.device import true_div
from simaq_factory.labels import Label
from simaq_factory.phantom.deform import DisplacementField
from simaq_factory.phantom.spec import CellSpec, PhantomSpec

__all__ = ["voxelize", "paint_ellipsoid", "PaintObject", "cell_objects", "object_box", "boundary_delta"]

Vec3 = tuple[float, float, float]
Box = tuple[tuple[int, int, int], tuple[int, int, int]]
_BAND_EPS = 1e-3  # extra width of the boundary band (level units), covers float32 rounding


@dataclass(frozen=True)
class PaintObject:
    """One ellipsoid to paint: centre/radii in voxels, LAC ``value`` and class ``label``."""

    center: Vec3
    radii: Vec3
    value: float
    label: int


def cell_objects(cell: CellSpec) -> Iterator[PaintObject]:
    """The objects of one cell in paint order (wall, body, nucleus, vacuoles, droplets)."""
    yield PaintObject(cell.center, cell.outer_radii, cell.wall_lac, int(Label.CELL))
    yield PaintObject(cell.center, cell.radii, cell.lac, int(Label.CELL))
    if cell.nucleus is not None:
        yield PaintObject(cell.nucleus.center, cell.nucleus.radii, cell.nucleus.lac, int(Label.NUCLEUS))
    for vac in cell.vacuoles:
        yield PaintObject(vac.center, vac.radii, vac.lac, int(Label.VACUOLE))
    for drop in cell.droplets:
        yield PaintObject(drop.center, drop.radii, drop.lac, int(Label.LIPID_DROPLET))


def object_box(obj: PaintObject, shape: tuple[int, ...], margin: np.ndarray) -> Box | None:
    """Bounding box [lo, hi) of ``obj`` grown by ``margin`` (3,) voxels, clipped; None if empty."""
    lo, hi = [], []
    for c, r, n, m in zip(obj.center, obj.radii, shape, margin):
        a = max(math.floor(c - r - m), 0)
        b = min(math.ceil(c + r + m) + 1, n)
        if b <= a:
            return None
        lo.append(a)
        hi.append(b)
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def boundary_delta(obj: PaintObject, field: DisplacementField | None) -> float:
    """Bound on how much √level can change within one voxel cube (±0.5 voxel on every axis)."""
    if field is None:
        dp = np.full(3, 0.5)
    else:
        dp = 0.5 + 0.5 * field.lipschitz.sum(axis=1)
    return float(np.sqrt(np.sum((dp / np.asarray(obj.radii)) ** 2)))


def _axis_sq(lo: int, hi: int, c: float, r: float, device: torch.device) -> torch.Tensor:
    idx = torch.arange(lo, hi, device=device, dtype=torch.float64)
    return (true_div(idx - c, r) ** 2).to(torch.float32)


def _deformed_sq(coord: torch.Tensor, u: torch.Tensor, c: float, r: float) -> torch.Tensor:
    d = true_div((coord + u) - c, r)
    return d * d


def _level(obj: PaintObject, box: Box, field: DisplacementField | None, u: torch.Tensor | None,
           device: torch.device) -> torch.Tensor:
    """Level Σ((p − c)/r)² at the voxels of ``box`` (float32 (nz, ny, nx)); ``u`` = field on box."""
    (z0, y0, x0), (z1, y1, x1) = box
    (cz, cy, cx), (rz, ry, rx) = obj.center, obj.radii
    if field is None or u is None:
        sq = [_axis_sq(a, b, c, r, device) for a, b, c, r in zip(box[0], box[1], obj.center, obj.radii)]
        return (sq[0][:, None] + sq[1][None, :])[:, :, None] + sq[2][None, None, :]
    zz = torch.arange(z0, z1, device=device, dtype=torch.float32)
    yy = torch.arange(y0, y1, device=device, dtype=torch.float32)
    xx = torch.arange(x0, x1, device=device, dtype=torch.float32)
    if field.spec.mode == "2d":
        tz = _axis_sq(z0, z1, cz, rz, device)
        ty = _deformed_sq(yy[:, None], u[0], cy, ry)
        tx = _deformed_sq(xx[None, :], u[1], cx, rx)
        return tz[:, None, None] + (ty + tx)[None]
    tz = _deformed_sq(zz[:, None, None], u[0], cz, rz)
    ty = _deformed_sq(yy[None, :, None], u[1], cy, ry)
    tx = _deformed_sq(xx[None, None, :], u[2], cx, rx)
    return (tz + ty) + tx


def _slice_field(u: torch.Tensor, group: Box, box: Box, mode: str) -> torch.Tensor:
    axes = (1, 2) if mode == "2d" else (0, 1, 2)
    out = u
    for gi, a in enumerate(axes):
        out = out.narrow(gi + 1, box[0][a] - group[0][a], box[1][a] - box[0][a])
    return out


def _union(boxes: list[Box]) -> Box:
    lo = tuple(min(b[0][a] for b in boxes) for a in range(3))
    hi = tuple(max(b[1][a] for b in boxes) for a in range(3))
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def paint_ellipsoid(
    phantom: torch.Tensor,
    labels: torch.Tensor,
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
    value: float,
    label: int,
) -> None:
    """Write ``value`` into ``phantom`` and ``label`` into ``labels`` inside one undeformed ellipsoid.

    ``phantom`` float32 (Z, Y, X) and ``labels`` uint8 (Z, Y, X) share device and shape; in place.
    """
    if min(radii) <= 0:
        return
    obj = PaintObject(tuple(center), tuple(radii), value, label)  # type: ignore[arg-type]
    box = object_box(obj, tuple(phantom.shape), np.zeros(3))
    if box is None:
        return
    inside = _level(obj, box, None, None, phantom.device) <= 1.0
    sl = tuple(slice(a, b) for a, b in zip(*box))
    phantom[sl].masked_fill_(inside, value)
    labels[sl].masked_fill_(inside, label)


def voxelize(
    spec: PhantomSpec, shape: tuple[int, int, int] | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``spec`` → (phantom float32 (Z, Y, X) LAC, labels uint8 (Z, Y, X) in {0, …, 4}).

    ``shape`` defaults to ``spec.shape``; a different shape clips objects at the volume border
    (coordinates are not rescaled; the deformation field is built for ``shape``).
    """
    from simaq_factory.phantom.antialias import antialias  # local: antialias imports this module

    shape = tuple(spec.shape) if shape is None else tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {shape!r}")
    if int(spec.supersample) < 1:
        raise ValueError(f"supersample must be >= 1, got {spec.supersample!r}")
    device = torch.device(device)
    phantom = torch.zeros(shape, dtype=torch.float32, device=device)
    labels = torch.zeros(shape, dtype=torch.uint8, device=device)
    field = None if spec.deformation is None else DisplacementField(spec.deformation, shape, device)
    margin = np.zeros(3) if field is None else np.ceil(field.umax)
    k = int(spec.supersample)
    boundary = torch.zeros(shape, dtype=torch.bool, device=device) if k > 1 else None
    groups: list[list[tuple[PaintObject, Box]]] = []
    for cell in spec.cells:
        items = []
        for obj in cell_objects(cell):
            if min(obj.radii) <= 0:
                continue
            box = object_box(obj, shape, margin)
            if box is not None:
                items.append((obj, box))
        if not items:
            continue
        groups.append(items)
        group = _union([b for _, b in items])
        u_group = None if field is None else field.on_box(*group)
        for obj, box in items:
            u = None if u_group is None or field is None else _slice_field(u_group, group, box, field.spec.mode)
            level = _level(obj, box, field, u, device)
            sl = tuple(slice(a, b) for a, b in zip(*box))
            inside = level <= 1.0
            phantom[sl].masked_fill_(inside, obj.value)
            labels[sl].masked_fill_(inside, obj.label)
            if boundary is not None:
                delta = boundary_delta(obj, field) + _BAND_EPS
                s = torch.sqrt(level)
                boundary[sl] |= (s >= 1.0 - delta) & (s <= 1.0 + delta)
    if boundary is not None:
        antialias(phantom, boundary, groups, field, k)
    return phantom, labels
