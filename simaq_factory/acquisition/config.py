"""Recipe fields of the sinogram-space artifacts (:mod:`simaq_factory.acquisition.sinogram`).

Pure data, no torch: reading a recipe (``simaq-factory status``, ``validate``) does not load the
numerical stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simaq_factory.recipe.fields import Dist, spec

#: Voxel size of the reference's 512³ volumes in µm (§0.3: inferred 35-40 nm; not stated anywhere).
REFERENCE_VOXEL_UM = 0.04


@dataclass(frozen=True, kw_only=True)
class FlickerConfig:
    """Flat-field "flicker": additive low-frequency bias per projection (§3.5).

    The maps come from the dataset's ``perlin_lo_2d`` noise bank (``artifacts.banks.perlin_lo_2d``
    sets their size and frequency), as the reference read them from a folder of 2D maps.
    """

    enabled: bool = spec(True, doc="apply flicker (§3.5; the reference's probability field is unused)")
    strength: Dist = spec(
        default_factory=lambda: Dist.normal(0.05, 0.03, min=0.0, max=1.0),
        ge=0.0,
        doc="f, clip(N(0.05, 0.03), 0, 1); bias up to f·mean(projection) (§3.5)",
    )


@dataclass(frozen=True, kw_only=True)
class IceThicknessConfig:
    """Angle-dependent ice slab attenuation (§3.6)."""

    enabled: bool = spec(True, doc="add the ice slab term (§3.6)")
    thickness: Dist = spec(
        default_factory=lambda: Dist.normal(10000.0, 2000.0, min=5000.0, max=20000.0),
        ge=0.0,
        doc="slab thickness h, clip(N(10000, 2000), 5000, 20000) (§3.6)",
    )
    lac: Dist = spec(
        default_factory=lambda: Dist.normal(0.01, 1e-5),
        doc="per-detector-pixel ice attenuation, N(0.01, 1e-5) i.i.d. (§3.6)",
    )
    min_cos: float = spec(
        0.05,
        gt=0.0,
        le=1.0,
        doc="path = h / max(cos|θ|, this): bounds the reference's division by ~0 near ±90° (§3.6)",
    )


@dataclass(frozen=True, kw_only=True)
class DetectorNoiseConfig:
    """Additive Gaussian noise in the line-integral domain (§3.7: declared, never used)."""

    enabled: bool = spec(False, doc="add detector noise (§3.7: the reference never applied it)")
    probability: float = spec(1.0, ge=0.0, le=1.0, doc="P(apply) per volume (§3.7: 1.0)")
    mean: Dist = spec(default_factory=lambda: Dist.const(1e-4), doc="offset μ (§3.7: 1e-4, std 0)")
    sigma: Dist = spec(
        default_factory=lambda: Dist.normal(1e-3, 1e-3, min=1e-3),
        ge=0.0,
        doc="noise σ per volume, clip(N(1e-3, 1e-3), 1e-3, ∞) (§3.7)",
    )


@dataclass(frozen=True, kw_only=True)
class PoissonConfig:
    """Photon counting noise (§3.7 proposal; the paper omits it for high photon counts)."""

    enabled: bool = spec(False, doc="apply Poisson noise (§3.7: absent from the reference)")
    photons: Dist = spec(
        default_factory=lambda: Dist.const(1e4), gt=0.0, doc="incident photons I0 per detector pixel"
    )
    attenuation_scale: float | Literal["auto"] = spec(
        "auto",
        doc="optical depth per line-integral unit = this volume's voxel size in µm (LACs are µm⁻¹). "
        "auto: REFERENCE_VOXEL_UM × voxel_length, i.e. 0.04 µm per reference voxel (§0.3 estimate: "
        "35-40 nm at 512³) times the volume's voxel length in reference voxels",
    )

    def __post_init__(self) -> None:
        s = self.attenuation_scale
        if s != "auto" and (isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0):
            raise ValueError(f"poisson.attenuation_scale must be > 0 or 'auto', got {s!r}")
    min_counts: float = spec(1.0, gt=0.0, doc="zero counts are raised to this before the log")


@dataclass(frozen=True, kw_only=True)
class MisalignmentConfig:
    """Per-projection rigid shifts (§3.7 proposal; paper: rolling pixels and mean padding)."""

    enabled: bool = spec(False, doc="shift projections (§3.7: absent from the reference)")
    detector_shift_px: Dist = spec(
        default_factory=lambda: Dist.normal(0.0, 1.0, min=-5.0, max=5.0),
        doc="shift along the detector (D), pixels, one draw per projection",
    )
    axial_shift_px: Dist = spec(
        default_factory=lambda: Dist.normal(0.0, 1.0, min=-5.0, max=5.0),
        doc="shift along the tilt axis (Z), pixels, one draw per projection",
    )
    axis_tilt_deg: Dist = spec(
        default_factory=lambda: Dist.normal(0.0, 0.5, min=-3.0, max=3.0),
        doc="in-plane tilt ψ of the rotation axis on the detector, degrees, one draw per tilt series "
        "(the axis runs along (cos ψ, sin ψ) in (Z, D)); the reconstruction assumes ψ = 0",
    )


@dataclass(frozen=True, kw_only=True)
class SinogramArtifactsConfig:
    """Sinogram-space artifacts (§3.5–§3.7), applied in the order listed in the module docstring."""

    flicker: FlickerConfig = spec(default_factory=FlickerConfig, doc="flat-field flicker (§3.5)")
    ice_thickness: IceThicknessConfig = spec(
        default_factory=IceThicknessConfig, doc="ice slab attenuation (§3.6)"
    )
    misalignment: MisalignmentConfig = spec(
        default_factory=MisalignmentConfig, doc="projection shifts (§3.7)"
    )
    poisson: PoissonConfig = spec(default_factory=PoissonConfig, doc="photon noise (§3.7)")
    detector_noise: DetectorNoiseConfig = spec(
        default_factory=DetectorNoiseConfig, doc="additive Gaussian noise (§3.7)"
    )
