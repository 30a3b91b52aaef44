"""Tomography core: parallel-beam geometry, pure-PyTorch projector, FBP filters and reconstruction.

Volumes are (Z, Y, X) with Z the rotation axis; projection stacks are (A, Z, D). See
:mod:`simaq_factory.tomo.geometry` for the conventions (centre, angle sign, weighting).
"""

from simaq_factory.tomo.config import ReconstructionConfig, reconstruct
from simaq_factory.tomo.fbp import fbp
from simaq_factory.tomo.filters import (
    FILTER_NAMES,
    filter_projections,
    fourier_filter,
    padded_size,
    skimage_padded_size,
)
from simaq_factory.tomo.geometry import Geometry
from simaq_factory.tomo.projector import backproject, forward_project

__all__ = [
    "FILTER_NAMES",
    "Geometry",
    "ReconstructionConfig",
    "backproject",
    "fbp",
    "filter_projections",
    "forward_project",
    "fourier_filter",
    "padded_size",
    "reconstruct",
    "skimage_padded_size",
]
