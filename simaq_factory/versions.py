"""Versions of the software that produced a dataset (recorded in cards and provenance)."""

from __future__ import annotations

import platform
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """simaq-factory and its main dependencies, plus Python."""
    out = {d: _version(d) for d in ("simaq-factory", "torch", "numpy", "zarr", "numcodecs", "dask",
                                     "distributed", "perlin-numpy")}
    out["python"] = platform.python_version()
    return out
