"""The dataset's on-disk layout (design §5): which arrays exist, their shapes, chunks and shards.

``OUT/dataset.zarr`` is a Zarr v3 group. Every array has the sample index as axis 0; a shard holds
``samples_per_shard`` whole samples (one Dask task owns one shard, so no two writers ever touch a
shard) and inner chunks are thin Z-slabs ``(1, chunk_z, Y, X)`` so a 7-slice window reads few chunks.

=========  =======================  ==========================  =================================
array      dtype                    shape                       meaning
=========  =======================  ==========================  =================================
phantom    float32                  (N, Z, Y, X)                ground-truth LAC
labels     uint8                    (N, Z, Y, X)                0 bg, 1 cell, 2 vacuole, 3 lipid
noisy      float32 | float16        (N, Z, Y, X)                phantom after phantom-space artifacts
recon      float32 | float16        (N, Z, Y, X)                raw FBP reconstruction (not normalised)
sinogram   float32                  (N, A_max, Z, D)            projections, NaN rows past n_angles
angles     float32                  (N, A_max)                  reconstruction angles (deg), NaN pad
=========  =======================  ==========================  =================================

Z (axis 1 of the volume arrays, axis 0 of a sample) is the tilt axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
GROUP_NAME = "dataset.zarr"
PROVENANCE_DIR = "provenance"
VOLUME_AXES = ("sample", "z", "y", "x")


@dataclass(frozen=True)
class ArraySpec:
    """Shape, dtype and chunking of one dataset array."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...]
    fill_value: Any
    dimension_names: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def shard_key(self, shard_index: int) -> str:
        """Path of a shard's file relative to the array (zarr v3 default chunk key encoding)."""
        return "c/" + "/".join([str(shard_index)] + ["0"] * (len(self.shape) - 1))


def array_specs(recipe: Any, a_max: int) -> dict[str, ArraySpec]:
    """The arrays a recipe writes, in a fixed order. ``a_max`` = largest retained angle count."""
    ds = recipe.dataset
    n = ds.n_samples
    z, y, x = ds.shape
    k = ds.samples_per_shard
    cz = min(ds.chunk_z, z)
    vol_shape = (n, z, y, x)
    vol_chunks = (1, cz, y, x)
    vol_shards = (k, z, y, x)
    specs: dict[str, ArraySpec] = {
        "phantom": ArraySpec("phantom", "float32", vol_shape, vol_chunks, vol_shards, 0.0, VOLUME_AXES),
        "labels": ArraySpec("labels", "uint8", vol_shape, vol_chunks, vol_shards, 0, VOLUME_AXES),
    }
    if ds.outputs.noisy:
        specs["noisy"] = ArraySpec(
            "noisy", ds.outputs.noisy_dtype, vol_shape, vol_chunks, vol_shards, 0.0, VOLUME_AXES
        )
    specs["recon"] = ArraySpec(
        "recon", ds.outputs.recon_dtype, vol_shape, vol_chunks, vol_shards, 0.0, VOLUME_AXES
    )
    if ds.outputs.sinogram:
        specs["sinogram"] = ArraySpec(
            "sinogram",
            "float32",
            (n, a_max, z, x),
            (1, a_max, cz, x),
            (k, a_max, z, x),
            float("nan"),
            ("sample", "angle", "z", "detector"),
        )
    if ds.outputs.angles:
        specs["angles"] = ArraySpec(
            "angles", "float32", (n, a_max), (1, a_max), (k, a_max), float("nan"), ("sample", "angle")
        )
    return specs


def shard_ranges(n_samples: int, samples_per_shard: int) -> list[range]:
    """Sample indices of each shard; the last shard may be short."""
    return [
        range(s, min(s + samples_per_shard, n_samples)) for s in range(0, n_samples, samples_per_shard)
    ]


def provenance_path(out: Path, shard_index: int) -> Path:
    return out / PROVENANCE_DIR / f"shard-{shard_index:06d}.json"
