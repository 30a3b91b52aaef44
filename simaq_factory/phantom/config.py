"""Recipe section ``phantom``: yeast-cell phantom geometry (reference-simaq.md §1, §9.1).

Sizes are in *generation units* (the reference's sampling units, mean cell radius 50); the
voxelizer maps them to voxels with ``scale`` (reference §1.2: 1.2 voxels per unit at 512³).
Every default equals the reference value unless the doc says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from simaq_factory.recipe.fields import Dist, spec

__all__ = [
    "ApollonianConfig",
    "AntialiasConfig",
    "CellConfig",
    "CellsConfig",
    "DeformationConfig",
    "LayoutConfig",
    "LipidDropletConfig",
    "NucleusConfig",
    "PhantomConfig",
    "VacuoleConfig",
]


@dataclass(frozen=True, kw_only=True)
class CellConfig:
    """One cell: axis-aligned ellipsoid body plus a wall shell (reference §1.1, §1.3)."""

    radius: Dist = spec(
        default_factory=lambda: Dist.normal(50.0, 2.5, 40.0, 60.0),
        gt=0,
        doc="per-axis cell radius (units); three independent draws, clipped (§1.3)",
    )
    wall_width: Dist = spec(
        default_factory=lambda: Dist.uniform(1.0, 1.5),
        ge=0,
        doc="wall shell thickness added to every radius (units), one draw per cell (§1.3)",
    )
    lac: Dist = spec(
        default_factory=lambda: Dist.normal(0.346, 0.027),
        doc="cytoplasm LAC, one draw per cell (§1.1)",
    )
    wall_lac: Dist = spec(
        default_factory=lambda: Dist.normal(0.570, 0.111),
        doc="wall-shell LAC; the reference reuses the lipid distribution without abs (§1.1)",
    )


@dataclass(frozen=True, kw_only=True)
class ApollonianConfig:
    """Fragmentation of a vacuole into an Apollonian sphere cluster (reference §1.5)."""

    depth: int = spec(1, ge=0, le=3, doc="packing generations: 0 → 4, 1 → 9, 2 → 29 spheres (§1.5)")
    volume_fraction: float = spec(
        0.9,
        gt=0,
        le=1,
        doc="linear factor on (V_vacuole/V_packing)^(1/3); the reference's 0.9 makes the cluster "
        "span 1.164·(abc)^(1/3) (§1.5); fragments leaving the cell or hitting another vacuole are dropped",
    )
    keep_prob: float = spec(0.7, ge=0, le=1, doc="probability to keep each fragment (§1.5)")


@dataclass(frozen=True, kw_only=True)
class VacuoleConfig:
    """Vacuoles of one cell (reference §1.4–1.6)."""

    count: Dist = spec(
        default_factory=lambda: Dist.normal(2.0, 2.0, 1.0, 4.0),
        ge=0,
        le=64,
        doc="vacuoles per cell, int(clip(N(2, 2), 1, 4)) (§1.4); the draw is truncated toward zero",
    )
    radius: Dist = spec(
        default_factory=lambda: Dist.normal(38.0, 8.0),
        doc="base radius (units) before division by the vacuole count (§1.4)",
    )
    axis_jitter: float = spec(0.05, ge=0, doc="per-axis relative std around the base radius (§1.4)")
    radius_min: float = spec(
        15.0, gt=0, doc="per-axis radius clamp, lower (units). The reference's 25 (§1.4) made every "
        "vacuole of a cell that drew k ≥ 2 a sphere of radius 25, two of which never fit a cell, so no "
        "cell had more than one (bug 8); at 15 the k vacuoles of radius N(38, 8)/k fit and the mean "
        "vacuole volume fraction stays near the reference's (0.205 against 0.222 over 1500 cells). Its "
        "side effect on §1.6: fragments of vacuoles this small are all under the lipid droplets' "
        "radius max, so ~0.67 droplets per cell (up to 8 units) come from fractured vacuoles instead "
        "of the reference's ~0.06 (2.9-5.3 units), and the final vacuole fraction is 0.165, not 0.179; "
        "25 reproduces the reference"
    )
    radius_max: float = spec(45.0, gt=0, doc="per-axis radius clamp, upper (units) (§1.4)")
    lac: Dist = spec(
        default_factory=lambda: Dist.normal(0.182, 0.039),
        doc="vacuole LAC, one draw per vacuole or fragment (§1.1)",
    )
    containment_shrink: float = spec(
        0.95, gt=0, le=1, doc="vacuoles must lie inside the cell radii times this factor (§1.4)"
    )
    max_attempts: int = spec(25, ge=1, le=100_000, doc="placement attempts before the vacuole is dropped (§1.4)")
    fracture_rate: float = spec(0.3, ge=0, le=1, doc="probability to fragment a vacuole (§1.5)")
    apollonian: ApollonianConfig = spec(default_factory=ApollonianConfig, doc="fragmentation (§1.5)")
    to_lipid_prob: float = spec(
        0.3,
        ge=0,
        le=1,
        doc="probability that a vacuole/fragment with mean radius < lipid_droplet.radius max "
        "becomes a lipid droplet (§1.6)",
    )

    def __post_init__(self) -> None:
        if self.radius_min > self.radius_max:
            raise ValueError(f"radius_min ({self.radius_min}) must be <= radius_max ({self.radius_max})")


@dataclass(frozen=True, kw_only=True)
class LipidDropletConfig:
    """Lipid droplets of one cell (reference §1.7)."""

    count: Dist = spec(
        default_factory=lambda: Dist.normal(15.0, 5.0, 3.0, 30.0),
        ge=0,
        le=1000,
        doc="droplets per cell, int(clip(N(15, 5), 3, 30)) (§1.7)",
    )
    radius: Dist = spec(
        default_factory=lambda: Dist.normal(6.0, 1.0, 5.0, 8.0),
        gt=0,
        doc="droplet radius (units) (§1.7); its upper bound is also the vacuole→droplet threshold (§1.6)",
    )
    lac: Dist = spec(
        default_factory=lambda: Dist.normal(0.570, 0.111),
        doc="droplet LAC; the absolute value of the draw is used (§1.1)",
    )
    max_attempts: int = spec(100, ge=1, le=100_000, doc="placement attempts before the droplet is dropped (§1.7)")
    min_gap: float = spec(0.01, ge=0, doc="droplet–droplet clearance (units) (§1.7)")


@dataclass(frozen=True, kw_only=True)
class CellsConfig:
    """Number of cells per volume (reference §9.1 ``cells.count``)."""

    count: Dist = spec(
        default_factory=lambda: Dist.normal(3.0, 2.0, 1.0),
        ge=1,
        doc="cells per volume, max(1, int(N(3, 2))) (§11); the draw is truncated toward zero",
    )


@dataclass(frozen=True, kw_only=True)
class LayoutConfig:
    """Multi-cell layout minimising the paper's eq. 3 loss (reference §1.9, code version)."""

    plane: Literal["zx", "zy"] = spec(
        "zx",
        doc="layout plane: 'zx' = grid plane ⟂ 0° beam (our fix of §1.9 / bug 10); "
        "'zy' = the reference's plane containing the beam",
    )
    init_std: float = spec(10.0, ge=0, doc="std of initial in-plane positions (units) (§1.9)")
    offset_std: float = spec(
        0.0,
        ge=0,
        doc="std of the normal offset across the plane (units); reference: 0 (§1.9, bug 9)",
    )
    gap_eps: float = spec(0.01, gt=0, doc="desired clearance ε between cells (units) (§1.9)")
    quadratic_threshold: float = spec(1.0, ge=0, doc="gap above which the penalty is squared (§1.9)")
    compactness: float = spec(0.1, ge=0, doc="weight of Σ‖p_i‖ (§1.9)")
    lr: float = spec(
        1.0,
        gt=0,
        doc="Adam learning rate (units/step); reference 0.05 — raised 20× (§1.9 proposal: ~40× "
        "fewer steps); the stop rule still demands a clearance of ε/2 between all cells",
    )
    max_iter: int = spec(5000, ge=1, le=1_000_000, doc="Adam iterations per attempt (§1.9)")
    max_restarts: int = spec(
        3, ge=0, le=1000, doc="fresh random starts when an attempt ends with overlap; then an error is raised"
    )
    min_scale_fraction: float = spec(
        0.5,
        gt=0,
        le=1,
        doc="when the cells do not fit the volume the whole phantom is shrunk, at most down to "
        "this fraction of the requested scale; below it sampling raises PhantomFitError",
    )


@dataclass(frozen=True, kw_only=True)
class NucleusConfig:
    """Optional nucleus, label 4 (beyond the reference, which has none: §1.1). One per cell.

    Size: budding-yeast nuclear volume is ~7 % of the cell volume (nucleus-to-cell volume ratio
    ≈ 0.07, constant as cells grow; Jorgensen et al. 2007, Mol. Biol. Cell 18:3523), i.e. a radius
    ≈ 0.07^(1/3) ≈ 0.41 × the cell radius. LAC: **estimate** 0.25 ± 0.025 µm⁻¹, the middle of the
    0.2–0.3 µm⁻¹ nuclear LACs reported for yeast SXT (Parkinson et al. 2008, J. Struct. Biol.
    161:380; Uchida et al. 2009, PNAS 106:19375); the exact table values were not checked here.
    The nucleus is placed after the vacuoles, into the room they leave (so enabling it does not
    change the vacuoles), shrunk if needed; fragments and droplets must then stay clear of it. The
    reference's vacuoles are large (one of radius ≈ 38 in a cell of ≈ 50), so with the defaults
    many nuclei are shrunk and some cells have no room for one: over 800 cells, 85 % have a
    nucleus, of median radius 0.35 × the cell's (0.41 drawn); see ``min_size_fraction``.
    """

    enabled: bool = spec(False, doc="add one nucleus (label 4) per cell; off in the paper recipes")
    radius_fraction: Dist = spec(
        default_factory=lambda: Dist.normal(0.41, 0.02, 0.35, 0.47),
        gt=0,
        lt=1,
        doc="nuclear radius / cell radius, one draw per cell (volume ratio ≈ 0.07, Jorgensen 2007)",
    )
    axis_jitter: float = spec(
        0.05, ge=0, le=0.15, doc="per-axis relative std of the nuclear radii (clipped at ±3 std)"
    )
    lac: Dist = spec(
        default_factory=lambda: Dist.normal(0.25, 0.025, 0.2, 0.3),
        gt=0,
        doc="nuclear LAC (µm⁻¹); estimate from the 0.2–0.3 range of yeast SXT reports (see class doc)",
    )
    containment_shrink: float = spec(
        0.9, gt=0, le=1, doc="the nucleus must lie inside the cell radii times this factor"
    )
    max_attempts: int = spec(
        200, ge=1, le=100_000, doc="random centres tried at each size (and the cell centre) before a smaller one"
    )
    min_size_fraction: float = spec(
        0.3, gt=0, le=1, doc="smallest size, relative to the drawn radii, the nucleus is shrunk to "
        "(in steps of 0.05) to fit beside the vacuoles; below it the cell has no nucleus"
    )


@dataclass(frozen=True, kw_only=True)
class DeformationConfig:
    """Smooth random (elastic) deformation of phantom and labels together (reference §1.11).

    Lengths are in *reference voxels* (voxels at scale 1.2, i.e. at 512³) and are multiplied by
    ``scale / 1.2`` (= size/512 with scale "auto"), so every volume size gets the same deformation
    relative to its cells. The field is U(−1, 1) noise smoothed by a Gaussian of std ``sigma``;
    ``alpha`` is torchvision's ElasticTransform strength for size 512 as the reference uses it,
    giving a per-component displacement std of α / (4·√(3π)·σ) reference voxels (≈ 1.0 for the
    defaults: very mild, §1.11). Voxelization evaluates each object at x + u(x), so phantom and
    labels deform consistently (labels stay class ids).
    """

    mode: Literal["off", "2d", "3d"] = spec(
        "2d",
        doc="'2d' = reference: one (y, x) field shared by every z-slice; '3d' = a true 3D field; 'off'",
    )
    sigma: float = spec(40.0, gt=0, doc="smoothing std, reference voxels (reference 40, §1.11)")
    alpha: float = spec(
        500.0, ge=0, doc="strength in the reference's normalised units at 512 (reference 500, §1.11)"
    )

    def displacement_std(self) -> float:
        """Per-component displacement std in reference voxels: α / (4·√(3π)·σ)."""
        return self.alpha / (4.0 * math.sqrt(3.0 * math.pi) * self.sigma)


@dataclass(frozen=True, kw_only=True)
class AntialiasConfig:
    """Partial-volume anti-aliasing of the LAC volume (beyond the reference)."""

    supersample: int = spec(
        1,
        ge=1,
        le=8,
        doc="k > 1: voxels crossed by an object boundary get the mean LAC of k³ sub-samples; "
        "labels stay by voxel centre; 1 = off (reference)",
    )


@dataclass(frozen=True, kw_only=True)
class PhantomConfig:
    """Recipe section ``phantom`` (reference §1, §9.1), with deformation (§1.11) and extensions."""

    scale: float | Literal["auto"] = spec(
        "auto",
        gt=0,
        doc="voxels per generation unit; 'auto' = 1.2·min(shape)/512 (reference 1.2 at 512³, §1.2)",
    )
    cells: CellsConfig = spec(default_factory=CellsConfig, doc="cell count (§9.1)")
    cell: CellConfig = spec(default_factory=CellConfig, doc="cell body and wall (§1.3)")
    vacuole: VacuoleConfig = spec(default_factory=VacuoleConfig, doc="vacuoles (§1.4–1.6)")
    lipid_droplet: LipidDropletConfig = spec(default_factory=LipidDropletConfig, doc="droplets (§1.7)")
    layout: LayoutConfig = spec(default_factory=LayoutConfig, doc="multi-cell layout (§1.9)")
    nucleus: NucleusConfig = spec(default_factory=NucleusConfig, doc="optional nucleus (extension)")
    deformation: DeformationConfig = spec(
        default_factory=DeformationConfig, doc="elastic deformation (§1.11)"
    )
    antialias: AntialiasConfig = spec(
        default_factory=AntialiasConfig, doc="partial-volume anti-aliasing (extension)"
    )

    def resolved_scale(self, shape: tuple[int, int, int]) -> float:
        """Voxels per generation unit for a volume of ``shape`` (z, y, x)."""
        if self.scale == "auto":
            return 1.2 * min(shape) / 512.0
        return float(self.scale)
