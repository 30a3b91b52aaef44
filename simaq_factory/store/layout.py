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
recon      float32 | float16        (N, [3,] Z, Y, X)           raw reconstruction (not normalised)
sinogram   float32                  (N, [3,] A_max, S, D)       projections, NaN rows past n_angles
angles     float32                  (N, [3,] A_max)             reconstruction angles (deg), NaN pad
=========  =======================  ==========================  =================================

With ``acquisition.axes: 1`` (the reference) there is no ``axis`` dimension: Z (axis 1 of the
volume arrays, axis 0 of a sample) is the tilt axis, S = Z and at 0° the beam runs along Y and the
detector along X.

With ``acquisition.axes: 3`` (cubic shapes only) the arrays ``recon``, ``sinogram`` and ``angles``
gain an ``axis`` dimension after the sample: entry ``k`` is the acquisition with volume axis ``k``
(0 = z, 1 = y, 2 = x) as the tilt axis, each with its own sampled angles and sinogram artifacts.
Its frame is the cyclic permutation ``(k, k+1, k+2) mod 3`` of (z, y, x) as (tilt, beam at 0°,
detector) (:mod:`simaq_factory.acquisition.axes`):

* k = 0: tilt z, beam y at 0°, detector x — the one-axis acquisition;
* k = 1: tilt y, beam x at 0°, detector z;
* k = 2: tilt x, beam z at 0°, detector y.

``recon[i, k]`` is stored back in the canonical (Z, Y, X) orientation, so voxel (z, y, x) is the
same place in ``phantom``, ``labels`` and every ``recon[i, k]``; its missing wedge (and the
cylinder FBP clips to) lies about axis ``k``. ``sinogram[i, k]`` is that acquisition's stack
(A, S, D) as projected: S runs along the tilt axis ``k``, D along the detector axis.
Inner chunks of ``recon`` are ``(1, 1, chunk_z, Y, X)``; shards still hold whole samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
GROUP_NAME = "dataset.zarr"
PROVENANCE_DIR = "provenance"
SUMS = "SHA256SUMS"  # written by freeze, checked by verify
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
        return shard_key(shard_index, len(self.shape))


def shard_key(shard_index: int, ndim: int) -> str:
    """Path of shard ``shard_index``'s file relative to an ``ndim``-D array of the layout (one shard
    per ``samples_per_shard`` samples along axis 0; zarr v3 default chunk key encoding)."""
    return "c/" + "/".join([str(shard_index)] + ["0"] * (ndim - 1))


def n_axes(recipe: Any) -> int:
    """Acquisitions per sample (``acquisition.axes``; 1 for recipes that predate the field)."""
    return int(getattr(recipe.acquisition, "axes", 1))


def dataset_classes(recipe: Any) -> dict[int, str]:
    """The classes a recipe's labels hold, id → name (design §5: 4 nucleus only when enabled;
    never the ignore label): the card's ``label_map`` and the freeze's class fractions."""
    from simaq_factory.labels import LABEL_NAMES, Label

    return {int(k): v for k, v in LABEL_NAMES.items()
            if k != Label.IGNORE and (k != Label.NUCLEUS or recipe.phantom.nucleus.enabled)}


def axes_card(recipe: Any) -> dict[str, Any]:
    """Dataset-card fields describing the acquisition axes (written by the driver)."""
    from simaq_factory.acquisition.axes import axis_frame_record, tilt_axes

    axes = tilt_axes(n_axes(recipe))
    # the tilt axis by name: one name, or one per entry of recon's ``axis`` dimension
    names = [axis_frame_record(k)["tilt_axis"] for k in axes]
    card: dict[str, Any] = {"tilt_axis": names[0] if len(axes) == 1 else names, "tilt_axes": axes}
    if len(axes) > 1:
        card["axis_frames"] = [axis_frame_record(k) for k in axes]
    return card


def dataset_card(recipe: Any, rid: str, a_max: int) -> dict[str, Any]:
    """The dataset card a build starts with (the group attributes of ``dataset.zarr``), status "building"."""
    from simaq_factory.labels import Label
    from simaq_factory.versions import software_versions

    ds = recipe.dataset
    return {
        "format": "simaq-factory dataset",
        "schema_version": SCHEMA_VERSION,
        "recipe_id": rid,
        "seed": recipe.seed,
        "n_samples": ds.n_samples,
        "samples_per_shard": ds.samples_per_shard,
        "shape_zyx": list(ds.shape),
        # "tilt_axes": [0] and "tilt_axis": "z", or for three axes [0, 1, 2], ["z", "y", "x"] and the
        # "axis_frames" (store/layout.py)
        **axes_card(recipe),
        "axes": ["sample", "z", "y", "x"],
        "a_max": a_max,
        "label_map": {str(k): v for k, v in dataset_classes(recipe).items()},
        "ignore_label": int(Label.IGNORE),
        "units": {"phantom": "LAC per voxel length", "angles": "degrees", "lengths": "voxels"},
        "recon": recon_description(recipe),
        "software": software_versions(),
        "status": "building",
    }


def recon_description(recipe: Any) -> str:
    """What ``recon`` holds, for the card: the method the recipe reconstructs with, raw values."""
    rc = recipe.reconstruction
    if rc.method == "fbp":
        return f"raw FBP reconstruction ({rc.filter} filter), not normalised"
    clamp = ", clamped to >= 0" if rc.effective_nonneg else ""
    return f"raw {rc.method.upper()} reconstruction ({rc.iterations} iterations{clamp}), not normalised"

#: Card fields the recipe decides: ``status`` and ``verify`` compare them with it, a build rewrites them.
CARD_FROM_RECIPE = ("recipe_id", "seed", "n_samples", "samples_per_shard", "shape_zyx", "tilt_axis", "tilt_axes",
                    "axis_frames", "a_max", "label_map")


def card_disagreements(found: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    """The fields of :data:`CARD_FROM_RECIPE` where the stored card ``found`` differs from ``card``
    (:func:`dataset_card` of the recipe), with ``card``'s values as JSON reads them back."""
    expected = json.loads(json.dumps(card))
    return {k: expected.get(k) for k in CARD_FROM_RECIPE if found.get(k) != expected.get(k)}


def array_specs(recipe: Any, a_max: int) -> dict[str, ArraySpec]:
    """The arrays a recipe writes, in a fixed order. ``a_max`` = largest retained angle count."""
    ds = recipe.dataset
    n = ds.n_samples
    z, y, x = ds.shape
    k = ds.samples_per_shard
    cz = min(ds.chunk_z, z)
    # a shard must hold whole inner chunks: when chunk_z does not divide z, the shard extends past
    # the array's end (its last chunk is partial), still one shard per sample range
    zs = -(-z // cz) * cz
    vol_shape = (n, z, y, x)
    vol_chunks = (1, cz, y, x)
    vol_shards = (k, zs, y, x)
    # recon, sinogram and angles of a three-axis recipe carry an ``axis`` dimension after the sample
    m = n_axes(recipe)
    ax: tuple[int, ...] = (m,) if m > 1 else ()
    ax1: tuple[int, ...] = (1,) if m > 1 else ()
    ax_name: tuple[str, ...] = ("axis",) if m > 1 else ()
    specs: dict[str, ArraySpec] = {
        "phantom": ArraySpec("phantom", "float32", vol_shape, vol_chunks, vol_shards, 0.0, VOLUME_AXES),
        "labels": ArraySpec("labels", "uint8", vol_shape, vol_chunks, vol_shards, 0, VOLUME_AXES),
    }
    if ds.outputs.noisy:
        specs["noisy"] = ArraySpec(
            "noisy", ds.outputs.noisy_dtype, vol_shape, vol_chunks, vol_shards, 0.0, VOLUME_AXES
        )
    specs["recon"] = ArraySpec(
        "recon",
        ds.outputs.recon_dtype,
        (n, *ax, z, y, x),
        (1, *ax1, cz, y, x),
        (k, *ax, zs, y, x),
        0.0,
        ("sample", *ax_name, "z", "y", "x"),
    )
    if ds.outputs.sinogram:
        specs["sinogram"] = ArraySpec(
            "sinogram",
            "float32",
            (n, *ax, a_max, z, x),
            (1, *ax1, a_max, cz, x),
            (k, *ax, a_max, zs, x),
            float("nan"),
            ("sample", *ax_name, "angle", "slice" if m > 1 else "z", "detector"),
        )
    if ds.outputs.angles:
        specs["angles"] = ArraySpec(
            "angles", "float32", (n, *ax, a_max), (1, *ax, a_max), (k, *ax, a_max), float("nan"),
            ("sample", *ax_name, "angle"),
        )
    return specs


def shard_ranges(n_samples: int, samples_per_shard: int) -> list[range]:
    """Sample indices of each shard; the last shard may be short."""
    return [shard_range(n_samples, samples_per_shard, s) for s in range(-(-n_samples // samples_per_shard))]


def shard_range(n_samples: int, samples_per_shard: int, shard_index: int) -> range:
    """``shard_ranges(n_samples, samples_per_shard)[shard_index]`` without building the list."""
    if not 0 <= shard_index * samples_per_shard < n_samples:
        raise IndexError(f"shard {shard_index} of {n_samples} samples, {samples_per_shard} per shard")
    start = shard_index * samples_per_shard
    return range(start, min(start + samples_per_shard, n_samples))


def samples_text(samples: range) -> str:
    """``samples 2-3``, or ``sample 1`` for a one-sample shard, for messages."""
    return f"sample {samples.start}" if len(samples) == 1 else f"samples {samples.start}-{samples.stop - 1}"


def provenance_path(out: Path, shard_index: int) -> Path:
    return out / PROVENANCE_DIR / f"shard-{shard_index:06d}.json"
