"""Phantom-space artifacts (reference §2): volume blur, fiducial beads, Perlin ice texture.

Use :func:`sample_artifacts` to draw a volume's parameters (JSON-able provenance) and
:func:`apply_artifacts` to apply them deterministically on the phantom's device.
"""

from simaq_factory.artifacts.config import (
    ArtifactsConfig,
    BlurConfig,
    FiducialsConfig,
    PerlinTextureConfig,
)
from simaq_factory.artifacts.stage import apply_artifacts, sample_artifacts

__all__ = [
    "ArtifactsConfig",
    "BlurConfig",
    "FiducialsConfig",
    "PerlinTextureConfig",
    "apply_artifacts",
    "sample_artifacts",
]
