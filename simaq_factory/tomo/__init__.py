"""Tomography core: parallel-beam geometry, pure-PyTorch projector and its exact adjoint, FBP filters,
FBP and iterative (SIRT, CGLS) reconstruction.

Volumes are (Z, Y, X) with Z the rotation axis; projection stacks are (A, Z, D). See
:mod:`simaq_factory.tomo.geometry` for the conventions (centre, angle sign, weighting), and
:mod:`simaq_factory.tomo.adapters` for the optional ASTRA and torch-radon backends (imported on use).
"""

from typing import TYPE_CHECKING

from simaq_factory._lazy import lazy_exports

_EXPORTS = {
    "adjoint_project": "plan",
    "backproject": "projector",
    "cgls": "iterative",
    "fbp": "analytic",
    "FILTER_NAMES": "filters",
    "filter_projections": "filters",
    "forward_project": "projector",
    "fourier_filter": "filters",
    "Geometry": "geometry",
    "padded_size": "filters",
    "ProjectorPlan": "plan",
    "reconstruct": "config",
    "ReconstructionConfig": "config",
    "sirt": "iterative",
    "skimage_padded_size": "filters",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see
    from simaq_factory.tomo.analytic import fbp
    from simaq_factory.tomo.config import ReconstructionConfig, reconstruct
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
