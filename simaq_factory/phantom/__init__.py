"""Yeast-cell phantoms: sample a :class:`PhantomSpec` (pure data), then voxelize it.

    spec = sample_phantom(cfg, (Z, Y, X), rng)          # numpy Generator, voxel-space geometry
    phantom, labels = voxelize(spec, device="cuda")     # float32 LAC, uint8 labels (Z, Y, X)

The spec is pure data (``spec.to_dict()`` is stored as provenance) and includes the deformation
parameters and the supersampling factor: ``voxelize(PhantomSpec.from_dict(d))`` regenerates the
same bytes.

Axes are (z, y, x); z (axis 0) is the tilt axis, rays at 0° travel along y.
"""

from typing import TYPE_CHECKING

from simaq_factory._lazy import lazy_exports

_EXPORTS = {
    "CellSpec": "spec",
    "DeformationSpec": "spec",
    "DropletSpec": "spec",
    "NucleusSpec": "spec",
    "PhantomConfig": "config",
    "PhantomFitError": "sample",
    "PhantomLayoutError": "layout",
    "PhantomSpec": "spec",
    "sample_phantom": "sample",
    "VacuoleSpec": "spec",
    "voxelize": "voxelization",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see
    from simaq_factory.phantom.config import PhantomConfig
    from simaq_factory.phantom.layout import PhantomLayoutError
    from simaq_factory.phantom.sample import PhantomFitError, sample_phantom
    from simaq_factory.phantom.spec import (
        CellSpec,
        DeformationSpec,
        DropletSpec,
        NucleusSpec,
        PhantomSpec,
        VacuoleSpec,
    )
    from simaq_factory.phantom.voxelization import voxelize

__all__ = [
    "CellSpec",
    "DeformationSpec",
    "DropletSpec",
    "NucleusSpec",
    "PhantomConfig",
    "PhantomFitError",
    "PhantomLayoutError",
    "PhantomSpec",
    "VacuoleSpec",
    "sample_phantom",
    "voxelize",
]
