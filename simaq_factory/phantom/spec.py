"""``PhantomSpec``: the sampled phantom as pure, frozen, JSON-able data.

All geometry is in **voxel coordinates of the output volume**, axis order (z, y, x): axis 0 (z) is
the tilt axis, rays at 0° travel along y (axis 1). A voxel with integer index (i, j, k) lies inside
an ellipsoid (centre c, radii r) iff Σ((idx − c)/r)² ≤ 1. LACs are per-voxel values (µm⁻¹ in the
reference's reading, §0.3). ``to_dict``/``from_dict`` round-trip through plain lists and floats.

Schema 2 adds the optional nucleus per cell, the deformation parameters and the supersampling
factor, so the spec alone regenerates phantom and labels exactly; schema-1 dicts (no nucleus, no
deformation, no anti-aliasing) still load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simaq_factory.labels import Label

__all__ = [
    "SCHEMA_VERSION",
    "CellSpec",
    "DeformationSpec",
    "DropletSpec",
    "NucleusSpec",
    "PhantomSpec",
    "VacuoleSpec",
]

SCHEMA_VERSION = 2
_READABLE = (1, 2)

Vec3 = tuple[float, float, float]


def _vec3(value: Any, name: str) -> Vec3:
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        raise ValueError(f"{name}: expected 3 numbers, got {value!r}")
    return (vals[0], vals[1], vals[2])


def _check_label(data: dict[str, Any], expected: Label, kind: str) -> None:
    if "label" in data and int(data["label"]) != int(expected):
        raise ValueError(f"{kind}: label {data['label']!r} does not match {int(expected)}")


@dataclass(frozen=True, kw_only=True)
class VacuoleSpec:
    """An intact vacuole (ellipsoid) or one sphere of an Apollonian cluster (``cluster >= 0``)."""

    center: Vec3
    radii: Vec3
    lac: float
    cluster: int = -1  # index of the fragmented parent within its cell; -1 = intact vacuole

    label = Label.VACUOLE

    @property
    def fragment(self) -> bool:
        return self.cluster >= 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": int(self.label),
            "center": list(self.center),
            "radii": list(self.radii),
            "lac": self.lac,
            "cluster": self.cluster,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VacuoleSpec:
        _check_label(data, Label.VACUOLE, "vacuole")
        return cls(
            center=_vec3(data["center"], "vacuole.center"),
            radii=_vec3(data["radii"], "vacuole.radii"),
            lac=float(data["lac"]),
            cluster=int(data.get("cluster", -1)),
        )


@dataclass(frozen=True, kw_only=True)
class DropletSpec:
    """A spherical lipid droplet; ``converted`` marks a small vacuole fragment turned droplet (§1.6)."""

    center: Vec3
    radius: float
    lac: float
    converted: bool = False

    label = Label.LIPID_DROPLET

    @property
    def radii(self) -> Vec3:
        return (self.radius, self.radius, self.radius)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": int(self.label),
            "center": list(self.center),
            "radius": self.radius,
            "lac": self.lac,
            "converted": self.converted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DropletSpec:
        _check_label(data, Label.LIPID_DROPLET, "droplet")
        return cls(
            center=_vec3(data["center"], "droplet.center"),
            radius=float(data["radius"]),
            lac=float(data["lac"]),
            converted=bool(data.get("converted", False)),
        )


@dataclass(frozen=True, kw_only=True)
class NucleusSpec:
    """The nucleus of a cell (label 4): an axis-aligned ellipsoid inside the cell body."""

    center: Vec3
    radii: Vec3
    lac: float

    label = Label.NUCLEUS

    def to_dict(self) -> dict[str, Any]:
        return {"label": int(self.label), "center": list(self.center), "radii": list(self.radii), "lac": self.lac}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NucleusSpec:
        _check_label(data, Label.NUCLEUS, "nucleus")
        return cls(
            center=_vec3(data["center"], "nucleus.center"),
            radii=_vec3(data["radii"], "nucleus.radii"),
            lac=float(data["lac"]),
        )


@dataclass(frozen=True, kw_only=True)
class DeformationSpec:
    """Resolved elastic-deformation parameters, all lengths in voxels of the output volume.

    The displacement field is rebuilt from these numbers alone (:mod:`.deform`): U(−1, 1) noise
    from ``numpy.random.default_rng(seed)`` on a grid of ``spacing`` voxels, smoothed by a Gaussian
    of ``sigma`` voxels and normalised to a per-component std of ``std`` voxels. ``mode`` "2d": a
    (y, x) field shared by all z; "3d": a (z, y, x) field.
    """

    mode: str
    seed: int
    sigma: float
    std: float
    spacing: float

    def __post_init__(self) -> None:
        if self.mode not in ("2d", "3d"):
            raise ValueError(f"deformation.mode must be '2d' or '3d', got {self.mode!r}")
        if not (self.sigma > 0 and self.spacing > 0 and self.std >= 0):
            raise ValueError(f"deformation needs sigma > 0, spacing > 0, std >= 0: {self!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "seed": self.seed, "sigma": self.sigma, "std": self.std, "spacing": self.spacing}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeformationSpec:
        return cls(
            mode=str(data["mode"]),
            seed=int(data["seed"]),
            sigma=float(data["sigma"]),
            std=float(data["std"]),
            spacing=float(data["spacing"]),
        )


@dataclass(frozen=True, kw_only=True)
class CellSpec:
    """One cell: body ellipsoid (``radii``), wall shell of ``wall_width`` voxels, organelles."""

    center: Vec3
    radii: Vec3
    wall_width: float
    lac: float
    wall_lac: float
    vacuoles: tuple[VacuoleSpec, ...] = ()
    droplets: tuple[DropletSpec, ...] = ()
    nucleus: NucleusSpec | None = None

    label = Label.CELL

    @property
    def outer_radii(self) -> Vec3:
        """Radii of the wall's outer surface (body radii + wall width)."""
        w = self.wall_width
        return (self.radii[0] + w, self.radii[1] + w, self.radii[2] + w)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": int(self.label),
            "center": list(self.center),
            "radii": list(self.radii),
            "wall_width": self.wall_width,
            "lac": self.lac,
            "wall_lac": self.wall_lac,
            "vacuoles": [v.to_dict() for v in self.vacuoles],
            "droplets": [d.to_dict() for d in self.droplets],
            "nucleus": None if self.nucleus is None else self.nucleus.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellSpec:
        _check_label(data, Label.CELL, "cell")
        return cls(
            center=_vec3(data["center"], "cell.center"),
            radii=_vec3(data["radii"], "cell.radii"),
            wall_width=float(data["wall_width"]),
            lac=float(data["lac"]),
            wall_lac=float(data["wall_lac"]),
            vacuoles=tuple(VacuoleSpec.from_dict(v) for v in data.get("vacuoles", [])),
            droplets=tuple(DropletSpec.from_dict(d) for d in data.get("droplets", [])),
            nucleus=None if data.get("nucleus") is None else NucleusSpec.from_dict(data["nucleus"]),
        )


@dataclass(frozen=True, kw_only=True)
class PhantomSpec:
    """A whole phantom for a volume of ``shape`` (Z, Y, X) voxels.

    ``scale`` is the voxels per generation unit actually used (smaller than the requested scale
    when the cells had to be shrunk to fit the volume). ``deformation`` (None = none) and
    ``supersample`` (1 = no anti-aliasing) are rendering parameters applied by ``voxelize``.
    """

    shape: tuple[int, int, int]
    scale: float
    cells: tuple[CellSpec, ...]
    deformation: DeformationSpec | None = None
    supersample: int = 1
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, floats, ints, bools)."""
        return {
            "schema_version": self.schema_version,
            "shape": list(self.shape),
            "scale": self.scale,
            "cells": [c.to_dict() for c in self.cells],
            "deformation": None if self.deformation is None else self.deformation.to_dict(),
            "supersample": self.supersample,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomSpec:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on an unknown schema version."""
        version = int(data.get("schema_version", -1))
        if version not in _READABLE:
            raise ValueError(f"phantom spec schema_version {version} is not supported (expected one of {_READABLE})")
        shape = tuple(int(s) for s in data["shape"])
        if len(shape) != 3:
            raise ValueError(f"phantom spec shape must have 3 entries, got {data['shape']!r}")
        return cls(
            shape=(shape[0], shape[1], shape[2]),
            scale=float(data["scale"]),
            cells=tuple(CellSpec.from_dict(c) for c in data["cells"]),
            deformation=None if data.get("deformation") is None else DeformationSpec.from_dict(data["deformation"]),
            supersample=int(data.get("supersample", 1)),
            schema_version=version,
        )

    @property
    def n_cells(self) -> int:
        return len(self.cells)
