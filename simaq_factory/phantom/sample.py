"""Sample a yeast phantom: cells, vacuoles, Apollonian fragments, lipid droplets, layout.

Axes: volumes are indexed (z, y, x); axis 0 (z) is the tilt axis, at 0° rays travel along y
(axis 1) and the detector runs along x (axis 2). Geometry is sampled in generation units per cell
(cell centre at the origin, axis order (z, y, x), all ellipsoids axis-aligned), then laid out and
mapped to voxels: ``voxel = volume_centre + scale · units`` with volume_centre = ((n − 1)/2 per
axis), the rotation centre of the tomography geometry (the reference used n // 2).

Cells are spread in the **grid plane** (``layout.plane = "zx"``: the plane containing the tilt
axis and perpendicular to the 0° beam) with optional normal offsets along the third axis (y);
``"zy"`` reproduces the reference's plane (§1.9, bug 10).

Reference bugs fixed here (reference-simaq.md §8.3): exact containment (5); droplets are checked
against every vacuole (6); fragments are re-checked and **dropped** when they leave the 0.95-shrunk
cell or touch another vacuole or another cluster's fragments (7); the layout never accepts overlap
(9, see :mod:`.layout`); walls are part of the layout radius; the vacuole radius clamp starts at 15
instead of 25, so a cell's k vacuoles of radius N(38, 8)/k fit (8; ``vacuole.radius_min: 25``
reproduces the reference, where no cell had more than one).

Fit policy: all cells (with walls) must lie inside the inscribed cylinder around z (radius
min(Y, X)/2 − 2 in the (y, x) plane) and inside the z extent. If they do not, the layout is first
centred; if still too large, the whole phantom (positions and sizes) is shrunk uniformly, down to
``layout.min_scale_fraction`` of the requested scale; beyond that :class:`PhantomFitError` is raised.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from simaq_factory.phantom.apollonian import apollonian_packing
from simaq_factory.phantom.config import PhantomConfig
from simaq_factory.phantom.geometry import ellipsoid_inside, ellipsoids_overlap
from simaq_factory.phantom.layout import PhantomLayoutError, layout_discs
from simaq_factory.phantom.spec import CellSpec, DropletSpec, NucleusSpec, PhantomSpec, VacuoleSpec

__all__ = ["PhantomFitError", "sample_phantom", "sample_cell", "LocalCell"]

log = logging.getLogger(__name__)

_CHUNK = 16  # candidates tested per vectorised batch
_ORIGIN = np.zeros(3)


class PhantomFitError(PhantomLayoutError):
    """The laid-out cells do not fit the volume even at the smallest allowed scale."""


@dataclass
class LocalCell:
    """One cell in generation units, centred at the origin, axes (z, y, x)."""

    radii: np.ndarray
    wall: float
    lac: float
    wall_lac: float
    vac_c: list[np.ndarray] = field(default_factory=list)
    vac_r: list[np.ndarray] = field(default_factory=list)
    vac_lac: list[float] = field(default_factory=list)
    vac_cluster: list[int] = field(default_factory=list)
    drop_c: list[np.ndarray] = field(default_factory=list)
    drop_r: list[float] = field(default_factory=list)
    drop_lac: list[float] = field(default_factory=list)
    drop_converted: list[bool] = field(default_factory=list)
    nuc_c: np.ndarray | None = None
    nuc_r: np.ndarray | None = None
    nuc_lac: float = 0.0

    def nucleus(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """([centre], [radii]) of the nucleus, or two empty lists."""
        if self.nuc_c is None or self.nuc_r is None:
            return [], []
        return [self.nuc_c], [self.nuc_r]


def _first_valid(cands: np.ndarray, check: Callable[[np.ndarray], np.ndarray]) -> int:
    """Index of the first candidate row passing ``check`` (vectorised in chunks), or −1."""
    for start in range(0, len(cands), _CHUNK):
        ok = check(cands[start : start + _CHUNK])
        hit = np.flatnonzero(ok)
        if hit.size:
            return start + int(hit[0])
    return -1


def _clear_of(c: np.ndarray, r: np.ndarray, others_c: list[np.ndarray], others_r: list[np.ndarray]) -> np.ndarray:
    """(K,) bool: ellipsoids (c (K, 3), r (3,) or (K, 3)) overlap none of ``others``."""
    if not others_c:
        return np.ones(len(c), dtype=bool)
    oc, orr = np.stack(others_c), np.stack(others_r)
    r = np.broadcast_to(r, c.shape)
    return ~np.any(ellipsoids_overlap(c[:, None], r[:, None], oc[None], orr[None]), axis=1)


def _place_vacuoles(cfg: PhantomConfig, cell: LocalCell, rng: np.random.Generator) -> None:
    vc = cfg.vacuole
    k = max(0, int(vc.count.sample(rng)))
    shrunk = vc.containment_shrink * cell.radii
    nuc_c, nuc_r = cell.nucleus()
    for _ in range(k):
        base = vc.radius.sample(rng) / k
        radii = np.clip(rng.normal(base, abs(vc.axis_jitter * base), 3), vc.radius_min, vc.radius_max)
        lac = vc.lac.sample(rng)
        cands = rng.uniform(-1.0, 1.0, (vc.max_attempts, 3)) * (cell.radii - radii)

        def check(c: np.ndarray, radii: np.ndarray = radii) -> np.ndarray:
            ok = ellipsoid_inside(c, radii, _ORIGIN, shrunk)
            if ok.any():
                ok[ok] = _clear_of(c[ok], radii, cell.vac_c + nuc_c, cell.vac_r + nuc_r)
            return ok

        i = _first_valid(cands, check)
        if i < 0:
            log.debug("vacuole dropped after %d attempts", vc.max_attempts)
            continue
        cell.vac_c.append(cands[i])
        cell.vac_r.append(radii)
        cell.vac_lac.append(lac)
        cell.vac_cluster.append(-1)


def _fragment_vacuoles(cfg: PhantomConfig, cell: LocalCell, rng: np.random.Generator) -> None:
    """Replace fractured vacuoles by Apollonian clusters; drop fragments that do not fit (bug 7)."""
    vc = cfg.vacuole
    ap = vc.apollonian
    fractured = [rng.random() < vc.fracture_rate for _ in cell.vac_c]
    if not any(fractured):
        return
    pack_c, pack_r = apollonian_packing(ap.depth)
    pack_r3 = float(np.sum(pack_r * pack_r * pack_r))
    shrunk = vc.containment_shrink * cell.radii
    keep_c = [c for c, f in zip(cell.vac_c, fractured) if not f]
    keep_r = [r for r, f in zip(cell.vac_r, fractured) if not f]
    keep_lac = [x for x, f in zip(cell.vac_lac, fractured) if not f]
    keep_cluster = [-1] * len(keep_c)
    for j, (c, r, f) in enumerate(zip(cell.vac_c, cell.vac_r, fractured)):
        if not f:
            continue
        scaler = ap.volume_fraction * (float(np.prod(r)) / pack_r3) ** (1.0 / 3.0)
        kept = rng.random(len(pack_r)) < ap.keep_prob
        lacs = vc.lac.sample(rng, len(pack_r))
        fc = c + scaler * pack_c
        fr = np.repeat(scaler * pack_r[:, None], 3, axis=1)
        ok = kept.copy()
        if ok.any():
            ok[ok] = ellipsoid_inside(fc[ok], fr[ok], _ORIGIN, shrunk)
        if ok.any():
            nuc_c, nuc_r = cell.nucleus()
            ok[ok] = _clear_of(fc[ok], fr[ok], keep_c + nuc_c, keep_r + nuc_r)
        n_dropped = int(kept.sum() - ok.sum())
        if n_dropped:
            log.debug("cluster %d: %d fragments dropped (outside cell or touching a vacuole)", j, n_dropped)
        for i in np.flatnonzero(ok):
            keep_c.append(fc[i])
            keep_r.append(fr[i])
            keep_lac.append(float(lacs[i]))
            keep_cluster.append(j)
    cell.vac_c, cell.vac_r, cell.vac_lac, cell.vac_cluster = keep_c, keep_r, keep_lac, keep_cluster


def _droplet_lac(cfg: PhantomConfig, rng: np.random.Generator) -> float:
    return abs(cfg.lipid_droplet.lac.sample(rng))


def _convert_small_vacuoles(cfg: PhantomConfig, cell: LocalCell, rng: np.random.Generator) -> None:
    """Small vacuoles/fragments become lipid droplets with probability ``to_lipid_prob`` (§1.6)."""
    hi = cfg.lipid_droplet.radius.support()[1]
    threshold = hi if math.isfinite(hi) else cfg.lipid_droplet.radius.center
    keep = []
    for i, r in enumerate(cell.vac_r):
        mean_r = float(np.mean(r))
        if mean_r < threshold and rng.random() < cfg.vacuole.to_lipid_prob:
            cell.drop_c.append(cell.vac_c[i])
            cell.drop_r.append(mean_r)
            cell.drop_lac.append(_droplet_lac(cfg, rng))
            cell.drop_converted.append(True)
        else:
            keep.append(i)
    cell.vac_c = [cell.vac_c[i] for i in keep]
    cell.vac_r = [cell.vac_r[i] for i in keep]
    cell.vac_lac = [cell.vac_lac[i] for i in keep]
    cell.vac_cluster = [cell.vac_cluster[i] for i in keep]


def _place_droplets(cfg: PhantomConfig, cell: LocalCell, rng: np.random.Generator) -> None:
    ld = cfg.lipid_droplet
    n = max(0, int(ld.count.sample(rng)))
    vac_c = np.stack(cell.vac_c) if cell.vac_c else np.zeros((0, 3))
    vac_r = np.stack(cell.vac_r) if cell.vac_r else np.zeros((0, 3))
    for _ in range(n):
        r = ld.radius.sample(rng)
        lac = _droplet_lac(cfg, rng)
        r3 = np.full(3, r)
        reach = max(0.0, float(np.min(cell.radii)) - r)
        cands = rng.uniform(-1.0, 1.0, (ld.max_attempts, 3)) * reach

        def check(c: np.ndarray, r: float = r, r3: np.ndarray = r3) -> np.ndarray:
            ok = np.ones(len(c), dtype=bool)
            if cell.drop_c:
                dc, dr = np.stack(cell.drop_c), np.asarray(cell.drop_r)
                dist = np.linalg.norm(c[:, None] - dc[None], axis=-1)
                ok &= np.all(dist >= r + dr[None] + ld.min_gap, axis=1)
            if ok.any():
                ok[ok] = ellipsoid_inside(c[ok], r3, _ORIGIN, cell.radii)
            if ok.any() and cell.nuc_c is not None:
                ok[ok] = _clear_of(c[ok], r3, *cell.nucleus())
            if ok.any() and len(vac_c):
                idx = np.flatnonzero(ok)
                cc = c[idx][:, None]
                over = ellipsoids_overlap(cc, r3, vac_c[None], vac_r[None])
                if over.any():
                    a, b = np.nonzero(over)
                    inside = ellipsoid_inside(cc[a, 0], r3, vac_c[b], vac_r[b])
                    collide = np.zeros_like(over)
                    collide[a, b] = ~inside
                    ok[idx] = ~np.any(collide, axis=1)
            return ok

        i = _first_valid(cands, check)
        if i < 0:
            log.debug("droplet dropped after %d attempts", ld.max_attempts)
            continue
        cell.drop_c.append(cands[i])
        cell.drop_r.append(float(r))
        cell.drop_lac.append(lac)
        cell.drop_converted.append(False)


def _place_nucleus(cfg: PhantomConfig, cell: LocalCell, rng: np.random.Generator) -> None:
    """One nucleus per cell, inside ``containment_shrink`` × the cell radii and clear of the
    vacuoles, which are placed first (so the vacuoles keep the reference's statistics).

    Radii = f · cell radii · (1 + jitter) with f ~ ``radius_fraction``. ``max_attempts`` uniform
    random centres (and the cell centre) are tried at the drawn size, then at sizes scaled by
    0.95, 0.90, … down to ``min_size_fraction``; the first that fits is kept. When none fits (the
    reference's vacuoles can fill most of a cell) the cell has no nucleus. Draws a fixed number of
    values from ``rng``.
    """
    nc = cfg.nucleus
    frac = nc.radius_fraction.sample(rng)
    jitter = np.clip(rng.normal(0.0, nc.axis_jitter, 3), -3 * nc.axis_jitter, 3 * nc.axis_jitter)
    drawn = frac * cell.radii * (1.0 + jitter)
    lac = float(nc.lac.sample(rng))
    unit = np.concatenate([rng.uniform(-1.0, 1.0, (nc.max_attempts, 3)), _ORIGIN[None]])
    shrunk = nc.containment_shrink * cell.radii
    steps = int(math.floor((1.0 - nc.min_size_fraction) / 0.05 + 1e-9))
    for size in [1.0 - 0.05 * j for j in range(steps + 1)]:
        radii = np.minimum(drawn * size, shrunk * (1.0 - 1e-3))
        cands = unit * np.maximum(shrunk - radii, 0.0)

        def check(c: np.ndarray, radii: np.ndarray = radii) -> np.ndarray:
            ok = ellipsoid_inside(c, radii, _ORIGIN, shrunk)
            if ok.any():
                ok[ok] = _clear_of(c[ok], radii, cell.vac_c, cell.vac_r)
            return ok

        i = _first_valid(cands, check)
        if i >= 0:
            cell.nuc_c, cell.nuc_r, cell.nuc_lac = cands[i], radii, lac
            return
    log.debug("no room for a nucleus beside the vacuoles of this cell")


def sample_cell(cfg: PhantomConfig, rng: np.random.Generator) -> LocalCell:
    """Sample one cell with its organelles in generation units, centred at the origin."""
    cc = cfg.cell
    cell = LocalCell(
        radii=np.asarray(cc.radius.sample(rng, 3), dtype=np.float64),
        wall=float(cc.wall_width.sample(rng)),
        lac=float(cc.lac.sample(rng)),
        wall_lac=float(cc.wall_lac.sample(rng)),
    )
    _place_vacuoles(cfg, cell, rng)
    if cfg.nucleus.enabled:  # a child stream: the other organelles draw as without a nucleus
        _place_nucleus(cfg, cell, rng.spawn(1)[0])
    _fragment_vacuoles(cfg, cell, rng)
    _convert_small_vacuoles(cfg, cell, rng)
    _place_droplets(cfg, cell, rng)
    return cell


def _max_fit_scale(pos: np.ndarray, ext: np.ndarray, shape: tuple[int, int, int]) -> float:
    """Largest scale at which every outer ellipsoid (centres ``pos``, half-extents ``ext``; (n, 3)
    units) fits the z extent and the inscribed cylinder of the volume."""
    half_z = (shape[0] - 1) / 2.0
    radius = min(shape[1], shape[2]) / 2.0 - 2.0
    if half_z <= 0 or radius <= 0:
        return 0.0
    need_z = np.abs(pos[:, 0]) + ext[:, 0]
    need_r = np.hypot(pos[:, 1], pos[:, 2]) + np.max(ext[:, 1:], axis=1)
    return float(min(np.min(half_z / need_z), np.min(radius / need_r)))


def _centred(pos: np.ndarray, ext: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    out = pos.copy()
    for a in axes:
        out[:, a] -= 0.5 * (np.max(pos[:, a] + ext[:, a]) + np.min(pos[:, a] - ext[:, a]))
    return out


def place_cells(
    cfg: PhantomConfig, shape: tuple[int, int, int], rng: np.random.Generator, *, warn: bool = True
) -> tuple[list[LocalCell], np.ndarray, float]:
    """The first draws of :func:`sample_phantom`: its cells (local frames, units), their centres
    (units, around the volume's centre) and the scale (voxels per unit). numpy only, so that
    ``validate`` can lay out a sample as the build will without importing torch; ``warn=False``
    leaves out the layout's warning per failed attempt and the shrink notice (a pre-flight check).

    Raises :class:`PhantomLayoutError` when the cells cannot be separated and
    :class:`PhantomFitError` when they do not fit the volume (see the module docstring).
    """
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    n = max(1, int(cfg.cells.count.sample(rng)))
    cells = [sample_cell(cfg, rng) for _ in range(n)]
    ext = np.stack([c.radii + c.wall for c in cells])  # outer half-extents (n, 3), units
    rho = np.max(ext, axis=1)
    plane_pos = layout_discs(rho, cfg.layout, rng, warn=warn)
    offsets = rng.normal(0.0, cfg.layout.offset_std, n) if cfg.layout.offset_std > 0 else np.zeros(n)
    in_plane, normal = (2, 1) if cfg.layout.plane == "zx" else (1, 2)
    pos = np.zeros((n, 3))
    pos[:, 0] = plane_pos[:, 0]
    pos[:, in_plane] = plane_pos[:, 1]
    pos[:, normal] = offsets

    requested = cfg.resolved_scale(shape)
    scale = requested
    if _max_fit_scale(pos, ext, shape) < requested:
        pos = _centred(pos, ext, (0, in_plane))
        fit = _max_fit_scale(pos, ext, shape)
        if fit < requested:
            if fit < cfg.layout.min_scale_fraction * requested:
                raise PhantomFitError(
                    f"{n} cells do not fit a {'x'.join(map(str, shape))} (z, y, x) volume: scale {fit:.4g} needed, below "
                    f"{cfg.layout.min_scale_fraction:g} × requested {requested:.4g} (a smaller "
                    f"phantom.scale, 'auto' for this dataset.shape, or fewer phantom.cells.count fit; "
                    f"phantom.layout.min_scale_fraction allows more shrinking)"
                )
            scale = fit * (1.0 - 1e-9)
            if warn:
                log.info("phantom shrunk to scale %.4g (requested %.4g) to fit %d cells", scale, requested, n)
    return cells, pos, scale


def sample_phantom(
    cfg: PhantomConfig, shape: tuple[int, int, int], rng: np.random.Generator
) -> PhantomSpec:
    """Sample a phantom for a volume of ``shape`` (Z, Y, X) voxels; all geometry in voxels.

    Raises :class:`PhantomLayoutError` when the cells cannot be separated and
    :class:`PhantomFitError` when they do not fit the volume (see the module docstring).
    """
    from simaq_factory.phantom.deform import sample_deformation  # torch: not for place_cells alone

    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    cells, pos, scale = place_cells(cfg, shape, rng)
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0

    def vox(p: np.ndarray) -> tuple[float, float, float]:
        v = centre + scale * p
        return (float(v[0]), float(v[1]), float(v[2]))

    def rad(r: np.ndarray) -> tuple[float, float, float]:
        return (float(scale * r[0]), float(scale * r[1]), float(scale * r[2]))

    specs = []
    for cell, p in zip(cells, pos):
        vacs = tuple(
            VacuoleSpec(center=vox(p + c), radii=rad(r), lac=float(lac), cluster=int(cl))
            for c, r, lac, cl in zip(cell.vac_c, cell.vac_r, cell.vac_lac, cell.vac_cluster)
        )
        drops = tuple(
            DropletSpec(center=vox(p + c), radius=float(scale * r), lac=float(lac), converted=bool(cv))
            for c, r, lac, cv in zip(cell.drop_c, cell.drop_r, cell.drop_lac, cell.drop_converted)
        )
        specs.append(
            CellSpec(
                center=vox(p),
                radii=rad(cell.radii),
                wall_width=float(scale * cell.wall),
                lac=cell.lac,
                wall_lac=cell.wall_lac,
                vacuoles=vacs,
                droplets=drops,
                nucleus=None
                if cell.nuc_c is None or cell.nuc_r is None
                else NucleusSpec(center=vox(p + cell.nuc_c), radii=rad(cell.nuc_r), lac=cell.nuc_lac),
            )
        )
    deformation = sample_deformation(cfg.deformation, scale, rng)
    return PhantomSpec(
        shape=shape,
        scale=float(scale),
        cells=tuple(specs),
        deformation=deformation,
        supersample=int(cfg.antialias.supersample),
    )
