"""Tomography core: parallel-beam geometry, pure-PyTorch projector and its exact adjoint, FBP filters,
FBP and iterative (SIRT, CGLS) reconstruction.

Volumes are (Z, Y, X) with Z the rotation axis; projection stacks are (A, Z, D). See
:mod:`simaq_factory.tomo.geometry` for the conventions (centre, angle sign, weighting), and
:mod:`simaq_factory.tomo.adapters` for the optional ASTRA and torch-radon backends (imported on use).
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
from simaq_factory.tomo.iterative import cgls, sirt
from simaq_factory.tomo.plan import ProjectorPlan, adjoint_project
from simaq_factory.tomo.projector import backproject, forward_project

__all__ = [
    "FILTER_NAMES",
    "Geometry",
    "ProjectorPlan",
    "ReconstructionConfig",
    "adjoint_project",
    "backproject",
    "cgls",
    "fbp",
    "filter_projections",
    "forward_project",
    "fourier_filter",
    "padded_size",
    "reconstruct",
    "sirt",
    "skimage_padded_size",
]
