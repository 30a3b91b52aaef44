"""Phantom-space artifacts (reference §2): volume blur, gold beads, ice cracks, Perlin ice texture.

Use :func:`sample_artifacts` to draw a volume's parameters (JSON-able provenance) and
:func:`apply_artifacts` to apply them deterministically on the phantom's device, with the dataset's
noise banks (:mod:`simaq_factory.artifacts.banks`).
"""

from typing import TYPE_CHECKING

from simaq_factory._lazy import lazy_exports

_EXPORTS = {
    "apply_artifacts": "stage",
    "ArtifactsConfig": "config",
    "BanksConfig": "config",
    "BlurConfig": "config",
    "FiducialsConfig": "config",
    "IceCracksConfig": "config",
    "memory_banks": "banks",
    "NoiseBanks": "banks",
    "PerlinTextureConfig": "config",
    "sample_artifacts": "stage",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see
    from simaq_factory.artifacts.banks import NoiseBanks, memory_banks
    from simaq_factory.artifacts.config import (
        ArtifactsConfig,
        BanksConfig,
        BlurConfig,
        FiducialsConfig,
        IceCracksConfig,
        PerlinTextureConfig,
    )
    from simaq_factory.artifacts.stage import apply_artifacts, sample_artifacts

__all__ = [
    "ArtifactsConfig",
    "BanksConfig",
    "BlurConfig",
    "FiducialsConfig",
    "IceCracksConfig",
    "NoiseBanks",
    "PerlinTextureConfig",
    "apply_artifacts",
    "memory_banks",
    "sample_artifacts",
]
