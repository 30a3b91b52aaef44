"""Recipe section ``artifacts``: phantom-space artifacts (reference §2, defaults §9.2).

Volume blur, fiducial gold beads, ice cracks × low-frequency Perlin noise and the high-frequency
Perlin ice texture, in the reference order (§2.1). The noise fields come from banks built once per
dataset from the recipe seed (``artifacts.banks``, :mod:`simaq_factory.artifacts.banks`); a sample
only draws which entries it uses and how they are oriented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from simaq_factory.recipe.fields import Dist, spec

__all__ = [
    "ArtifactsConfig",
    "BanksConfig",
    "BlurConfig",
    "CrackBankConfig",
    "FiducialsConfig",
    "IceCracksConfig",
    "PerlinHiBankConfig",
    "PerlinLo2dBankConfig",
    "PerlinLoBankConfig",
    "PerlinTextureConfig",
    "crack_block_edge",
]


@dataclass(frozen=True, kw_only=True)
class BlurConfig:
    """Isotropic 3D Gaussian blur of the whole volume (§2.2, bug 12)."""

    probability: float = spec(1.0, ge=0.0, le=1.0, doc="P(apply the blur) (§2.2: 1.0)")
    sigma: Dist = spec(
        default_factory=lambda: Dist.normal(3.0, 2.0, min=1.0, max=5.0),
        gt=0.0,
        doc="blur σ in reference voxels (1/1.2 generation units, scaled to this volume's voxels); "
        "the reference's draw, clip(N(3, 2), 1, 5) (§2.2). With nominal_taps it is the nominal σ of "
        "the reference's truncated kernel, not the blur's own σ",
    )
    nominal_taps: int | None = spec(
        5,
        ge=3,
        doc="σ is the nominal σ of a Gaussian cut to this many taps, as the reference's fixed 5³ "
        "kernel (bug 12); the blur uses that kernel's effective σ (the standard deviation of the "
        "cut, normalised kernel: 0.96 at σ = 1 to 1.39 at σ = 5) with a kernel sized from it, so "
        "the strength of the reference's blur keeps its distribution without the fixed kernel. "
        "null: σ is the blur's own σ",
    )
    truncate: float = spec(
        3.0, gt=0.0, doc="kernel half-width = ceil(truncate·σ) voxels, at least 2 (fixes bug 12's fixed 5³ "
        "kernel); the kernel is the discrete Gaussian (exp(-σ²) I_n(σ²)), whose variance is σ² also "
        "below a voxel, where a sampled Gaussian vanishes (64³ and 128³ volumes, σ 0.1-0.35 voxels)"
    )
    kernel_size: int | None = spec(
        None,
        ge=1,
        doc="fixed odd kernel edge; 5 with nominal_taps null reproduces the reference's 5³ kernel "
        "(bug 12); null: from σ",
    )

    def __post_init__(self) -> None:
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            raise ValueError(f"blur.kernel_size must be odd, got {self.kernel_size}")
        if self.nominal_taps is not None and self.nominal_taps % 2 == 0:
            raise ValueError(f"blur.nominal_taps must be odd, got {self.nominal_taps}")
        if self.nominal_taps is not None and self.kernel_size is not None:
            raise ValueError("blur.kernel_size and blur.nominal_taps exclude each other "
                             "(set nominal_taps: null to blur with a fixed kernel)")


@dataclass(frozen=True, kw_only=True)
class FiducialsConfig:
    """Gold fiducial beads placed in the background, never touching cells (§2.3, bug 11)."""

    enabled: bool = spec(True, doc="place fiducial beads (§2.3)")
    count: Dist = spec(
        default_factory=lambda: Dist.normal(16.0, 4.0, min=3.0, max=25.0),
        ge=0.0,
        le=1000.0,
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
        200, ge=1, le=100_000, doc="rejection-sampling budget per bead; fewer beads are placed when exhausted"
    )


@dataclass(frozen=True, kw_only=True)
class IceCracksConfig:
    """Ice cracks × low-frequency Perlin noise, added on the background (§2.4).

    Amplitude and probability are the reference's; the crack generator (region competition,
    :mod:`simaq_factory.artifacts.cracks`) and the assembly knobs are our choices, since the
    reference released neither (§2.4 "Unknown").
    """

    probability: float = spec(1.0, ge=0.0, le=1.0, doc="P(add ice cracks) (§2.4: 1.0)")
    amplitude: Dist = spec(
        default_factory=lambda: Dist.normal(0.2, 0.02, min=0.05, max=0.5),
        ge=0.0,
        doc="A_c, added LAC at full crack strength, clip(N(0.2, 0.02), 0.05, 0.5) (§2.4, §9.2)",
    )
    layers: int = spec(
        2,
        ge=1,
        le=16,
        doc="crack-bank blocks combined (voxelwise max) per volume; reference: 'several randomly "
        "chosen samples' (§2.4), count unknown; our choice",
    )
    crop: float = spec(
        0.75,
        gt=0.0,
        le=1.0,
        doc="each layer is a random box of this fraction of the block edge (aspect of the volume), "
        "randomly permuted and flipped, resampled onto the volume; our choice",
    )
    seeds: int = spec(
        16, ge=2, le=4096, doc="competing regions per block (§2.4 proposal: 8-32); our choice"
    )
    cost_sigma: float = spec(
        2.0, ge=0.0, le=64.0, doc="Gaussian smoothing (block voxels) of the propagation-cost noise; our choice"
    )
    cost_contrast: float = spec(
        1.0,
        ge=0.0,
        le=20.0,
        doc="propagation cost exp(contrast · unit-variance smoothed noise); 0 = uniform cost; our choice",
    )
    speed_spread: float = spec(
        0.3, ge=0.0, le=3.0, doc="region growth speeds (local weights) exp(spread · N(0, 1)); our choice"
    )
    wall_fraction: float = spec(
        1.0,
        gt=0.0,
        le=1.0,
        doc="P(a wall between two regions is a crack); 1 = every wall (paper §3.1.2), lower = "
        "open, branching networks; our choice",
    )
    thickness_sigma: float = spec(
        0.0, ge=0.0, le=8.0, doc="Gaussian blur (block voxels) of the one-voxel crack sheets; 0 = none"
    )
    neighbourhood: Literal[6, 18, 26] = spec(
        26, doc="voxel neighbourhood of the region growth (26: near-isotropic geodesics); our choice"
    )


@dataclass(frozen=True, kw_only=True)
class PerlinTextureConfig:
    """High-frequency Perlin ice texture added on the background inside the cylinder (§2.5).

    The texture volumes come from the ``artifacts.banks.perlin_hi_3d`` bank.
    """

    enabled: bool = spec(True, doc="add the ice texture (§2.5)")
    amplitude: Dist = spec(
        default_factory=lambda: Dist.normal(0.1, 0.02, min=0.0, max=0.2),
        ge=0.0,
        doc="amplitude, N(0.1, 0.02) clipped to [0, 0.2] (±5σ). The reference clipped at max = mean, "
        "which put half the draws at exactly 0.1 (§2.5, bug 13); {mean: 0.1, std: 0.02, min: 0, max: 0.1} "
        "reproduces it",
    )
    cylinder_padding: float = spec(
        2.0, ge=0.0, doc="texture only inside the cylinder about z of radius min(Y, X)/2 − this (§2.5); "
        "not applied with acquisition.axes 3, whose y and x acquisitions have their own cylinders"
    )


def _check_edge(edge: int, res: int, octaves: int) -> None:
    """perlin-numpy needs the generated edge to be a multiple of the finest octave's period count."""
    finest = res * 2 ** (octaves - 1)
    if edge % finest != 0:
        raise ValueError(f"edge={edge} must be a multiple of res·2^(octaves−1) = {finest}")


@dataclass(frozen=True, kw_only=True)
class PerlinLoBankConfig:
    """Low-frequency 3D Perlin volumes that modulate the cracks (§2.4, §2.6 "lo")."""

    entries: int = spec(4, ge=1, le=1024, doc="volumes in the bank; our choice")
    edge: int = spec(32, ge=2, le=512, doc="edge of each stored cube (resampled to the volume); our choice")
    res: int = spec(2, ge=1, doc="Perlin periods per axis, coarsest octave (§2.6 proposal: 2-4)")
    octaves: int = spec(1, ge=1, le=6, doc="fractal octaves (§2.6 proposal: 1 for lo)")
    persistence: float = spec(0.5, gt=0.0, le=1.0, doc="amplitude ratio between octaves (§2.6)")

    def __post_init__(self) -> None:
        _check_edge(self.edge, self.res, self.octaves)


@dataclass(frozen=True, kw_only=True)
class PerlinHiBankConfig:
    """High-frequency 3D Perlin volumes for the ice texture (§2.5, §2.6 "hi")."""

    entries: int = spec(8, ge=1, le=1024, doc="volumes in the bank; our choice")
    edge: int = spec(64, ge=2, le=512, doc="edge of each stored cube (resampled to the volume); our choice")
    res: int = spec(
        8, ge=1, doc="Perlin periods per axis of the 64³ bank cube, coarsest octave; with 2 octaves the "
        "finest period is 4 bank voxels, 32 voxels at 512³ (our choice, coarser than the §2.6 "
        "proposal's 32-64 periods per axis, which a 64-edge bank cannot hold with 2 octaves and which "
        "a bank of 128³ or more per entry would need; raise edge and res together for finer ice)"
    )
    octaves: int = spec(2, ge=1, le=6, doc="fractal octaves, lacunarity 2 (§2.6 proposal: 2-4)")
    persistence: float = spec(0.5, gt=0.0, le=1.0, doc="amplitude ratio between octaves (§2.6)")

    def __post_init__(self) -> None:
        _check_edge(self.edge, self.res, self.octaves)


@dataclass(frozen=True, kw_only=True)
class PerlinLo2dBankConfig:
    """Low-frequency 2D Perlin maps for the flat-field flicker (§3.5, §2.6 "lo" 2D)."""

    entries: int = spec(
        64, ge=1, le=4096,
        doc="maps in the bank; each projection takes one in one of 8 orientations; our choice",
    )
    edge: int = spec(32, ge=2, le=1024, doc="edge of each stored map (resampled to the projection)")
    res: int = spec(2, ge=1, doc="Perlin periods across a map, coarsest octave (§2.6 proposal: 2-8)")
    octaves: int = spec(1, ge=1, le=6, doc="fractal octaves (§2.6 proposal: 1 for lo)")
    persistence: float = spec(0.5, gt=0.0, le=1.0, doc="amplitude ratio between octaves (§2.6)")

    def __post_init__(self) -> None:
        _check_edge(self.edge, self.res, self.octaves)


@dataclass(frozen=True, kw_only=True)
class CrackBankConfig:
    """Crack blocks made by the region-competition generator (§2.4; knobs in ``ice_cracks``)."""

    entries: int = spec(4, ge=1, le=256, doc="blocks in the bank; our choice")
    edge: int | None = spec(
        None,
        ge=8,
        le=512,
        doc="block edge in voxels; null: half the largest volume edge, rounded up to a multiple "
        "of 8, within [32, 128] (generation cost grows as edge^3 and is paid once per dataset). "
        "A sheet is one block voxel thick and a crop of 0.75 edge spans the volume, so below 256^3 "
        "the default's cracks are thicker in reference voxels and cover more of the background "
        "than at 256^3 and 512^3 (mean crack field 0.140 at 64^3, 0.083 at 128^3, 0.057 at 256^3, "
        "measured; the reference resized one 512^3 map, the same at every size); 128 gives "
        "about the 256^3/512^3 statistics at any size (64^3: 0.052) at 128^3 generation cost "
        "(64^3: 36 s against 3 s for two blocks on one core)",
    )


@dataclass(frozen=True, kw_only=True)
class BanksConfig:
    """Noise banks built once per dataset from the recipe seed and stored in it (design §2).

    The reference read such fields from disk (§2.6, §8.2): 3D volumes for the cracks and the ice
    texture, 2D maps for the flat-field flicker of each projection (§3.5).
    """

    perlin_lo_3d: PerlinLoBankConfig = spec(
        default_factory=PerlinLoBankConfig, doc="low-frequency volumes modulating the cracks"
    )
    perlin_hi_3d: PerlinHiBankConfig = spec(
        default_factory=PerlinHiBankConfig, doc="high-frequency volumes of the ice texture"
    )
    cracks: CrackBankConfig = spec(default_factory=CrackBankConfig, doc="ice-crack blocks")
    perlin_lo_2d: PerlinLo2dBankConfig = spec(
        default_factory=PerlinLo2dBankConfig, doc="low-frequency 2D maps of the flat-field flicker (§3.5)"
    )


def crack_block_edge(cfg: CrackBankConfig, shape: tuple[int, ...]) -> int:
    """The crack-block edge for volumes of ``shape`` (see :attr:`CrackBankConfig.edge`)."""
    if cfg.edge is not None:
        return int(cfg.edge)
    half = int(math.ceil(max(int(s) for s in shape) / 2 / 8)) * 8
    return min(128, max(32, half))


@dataclass(frozen=True, kw_only=True)
class ArtifactsConfig:
    """Phantom-space artifacts in the reference order: blur, beads, cracks, texture (§2.1)."""

    blur: BlurConfig = spec(default_factory=BlurConfig, doc="volume blur (§2.2)")
    fiducials: FiducialsConfig = spec(default_factory=FiducialsConfig, doc="gold beads (§2.3)")
    ice_cracks: IceCracksConfig = spec(default_factory=IceCracksConfig, doc="ice cracks (§2.4)")
    perlin: PerlinTextureConfig = spec(
        default_factory=PerlinTextureConfig, doc="high-frequency ice texture (§2.5)"
    )
    banks: BanksConfig = spec(default_factory=BanksConfig, doc="noise banks (design §2)")

    def __post_init__(self) -> None:
        edge = self.banks.cracks.edge
        if edge is not None and self.ice_cracks.seeds > edge**3:
            raise ValueError(
                f"ice_cracks.seeds ({self.ice_cracks.seeds}) exceeds the voxels of a "
                f"banks.cracks.edge={edge} block"
            )
