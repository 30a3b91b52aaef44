"""Recipe section ``artifacts``: phantom-space artifacts (reference §2, defaults §9.2).

Only volume blur, fiducial gold beads and the high-frequency Perlin ice texture are modelled here.
Ice cracks (§2.4) and precomputed noise banks are not implemented yet, so they have no fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from simaq_factory.artifacts.perlin import check_lattice
from simaq_factory.recipe.fields import Dist, spec

__all__ = ["ArtifactsConfig", "BlurConfig", "FiducialsConfig", "PerlinTextureConfig"]


@dataclass(frozen=True, kw_only=True)
class BlurConfig:
    """Isotropic 3D Gaussian blur of the whole volume (§2.2, bug 12)."""

    probability: float = spec(1.0, ge=0.0, le=1.0, doc="P(apply the blur) (§2.2: 1.0)")
    sigma: Dist = spec(
        default_factory=lambda: Dist.uniform(0.96, 1.39),
        gt=0.0,
        doc="blur σ in reference voxels (1/1.2 generation units, scaled to this volume's voxels). "
        "The reference drew clip(N(3, 2), 1, 5) but its fixed 5³ kernel cut the effective σ to "
        "0.96-1.39 (§2.2, bug 12); the default draws that effective range with a kernel sized "
        "from σ. For the reference's own draw use {mean: 3, std: 2, min: 1, max: 5} with kernel_size 5",
    )
    truncate: float = spec(
        3.0, gt=0.0, doc="kernel half-width = ceil(truncate·σ) voxels (fixes bug 12's fixed 5³ kernel)"
    )
    kernel_size: int | None = spec(
        None,
        ge=1,
        doc="fixed odd kernel edge; 5 reproduces the reference's 5³ kernel (bug 12); null: from σ",
    )

    def __post_init__(self) -> None:
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            raise ValueError(f"blur.kernel_size must be odd, got {self.kernel_size}")


@dataclass(frozen=True, kw_only=True)
class FiducialsConfig:
    """Gold fiducial beads placed in the background, never touching cells (§2.3, bug 11)."""

    enabled: bool = spec(True, doc="place fiducial beads (§2.3)")
    count: Dist = spec(
        default_factory=lambda: Dist.normal(16.0, 4.0, min=3.0, max=25.0),
        ge=0.0,
        doc="bead count, int(clip(N(16, 4), 3, 25)) (§2.3)",
    )
    radius: Dist = spec(
        default_factory=lambda: Dist.normal(4.0, 0.4, min=3.0, max=5.0),
        gt=0.0,
        doc="bead radius in generation units (× voxels_per_unit); reference fixed 4.0 (§2.3, bug 11)",
    )
    lac: Dist = spec(
        default_factory=lambda: Dist.normal(2.0, 0.2, min=1.5, max=2.5),
        ge=0.0,
        doc="bead LAC (voxels set to it); reference fixed 2.0 (§2.3, bug 11)",
    )
    max_candidates_per_bead: int = spec(
        200, ge=1, doc="rejection-sampling budget per bead; fewer beads are placed when exhausted"
    )


@dataclass(frozen=True, kw_only=True)
class PerlinTextureConfig:
    """High-frequency Perlin ice texture added on the background inside the cylinder (§2.5)."""

    enabled: bool = spec(True, doc="add the ice texture (§2.5)")
    amplitude: Dist = spec(
        default_factory=lambda: Dist.normal(0.1, 0.02, min=0.0, max=0.1),
        ge=0.0,
        doc="amplitude, clip(N(0.1, 0.02), 0, 0.1): max = mean puts half the draws at 0.1 (§2.5, bug 13)",
    )
    cylinder_padding: float = spec(
        2.0, ge=0.0, doc="texture only inside the cylinder of radius min(Y, X)/2 − this (§2.5)"
    )
    lattice: int = spec(64, ge=2, doc="edge of the generated noise cube before resampling (§2.6)")
    res: int = spec(8, ge=1, doc="Perlin periods per axis across the volume, coarsest octave (§2.6)")
    octaves: int = spec(2, ge=1, le=6, doc="fractal octaves (lacunarity 2) (§2.6)")
    persistence: float = spec(0.5, gt=0.0, le=1.0, doc="amplitude ratio between octaves (§2.6)")

    def __post_init__(self) -> None:
        check_lattice(self.lattice, self.res, self.octaves)


@dataclass(frozen=True, kw_only=True)
class ArtifactsConfig:
    """Phantom-space artifacts applied in the reference order: blur, beads, texture (§2.1)."""

    blur: BlurConfig = spec(default_factory=BlurConfig, doc="volume blur (§2.2)")
    fiducials: FiducialsConfig = spec(default_factory=FiducialsConfig, doc="gold beads (§2.3)")
    perlin: PerlinTextureConfig = spec(
        default_factory=PerlinTextureConfig, doc="high-frequency ice texture (§2.5)"
    )
