"""Read and write single volumes: TIFF, MRC, NRRD (incl. 3D Slicer ``.seg.nrrd``), Zarr, NumPy.

Volumes are numpy arrays in (Z, Y, X) order, Z = tilt axis. NRRD files are read and written in C
order (pynrrd ``index_order='C'``), which equals the reference's "swap first and last axis" of
pynrrd's default Fortran order: a file written with pynrrd's default ``index_order='F'`` is read
transposed. Writers go through a temporary name and a rename, so a failed write leaves no
half-written output.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simaq_factory.errors import SUFFIX_MODULES, BadInput, MissingExtra, optional, quiet_logger
from simaq_factory.mrcio import axis_labels, read_mrc_data
from simaq_factory.tiffio import read_tiff_volume, tiff_volume_series

log = logging.getLogger(__name__)

READ_SUFFIXES = (".tif", ".tiff", ".mrc", ".rec", ".map", ".nrrd", ".nhdr", ".npy", ".zarr")
WRITE_SUFFIXES = (".tif", ".tiff", ".mrc", ".rec", ".map", ".nrrd", ".zarr", ".npy")


def volume_suffix(path: str | Path) -> str:
    """Lower-case format suffix; ``x.seg.nrrd`` and a detached-header ``x.nhdr`` → ``.nrrd``."""
    p = Path(path)
    return ".nrrd" if p.name.lower().endswith(".seg.nrrd") or p.suffix.lower() == ".nhdr" else p.suffix.lower()


def is_slicer_seg(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(".seg.nrrd")


@dataclass
class Volume:
    """A (Z, Y, X) array and what its file said about it.

    ``voxel_size``: (z, y, x) spacing when the file records one (MRC ``voxel_size``, NRRD
    ``spacings``/``space directions``), else None. ``header``: the NRRD header (empty otherwise).
    """

    data: np.ndarray
    voxel_size: tuple[float, float, float] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    #: MRC placement, in (x, y, z) as MRC writes them: ``origin`` (Å) and the index of the first
    #: voxel along each axis (NXSTART, NYSTART, NZSTART); None for other formats
    mrc_origin: tuple[float, float, float] | None = None
    mrc_start: tuple[int, int, int] | None = None


def _mrc_problem(caught: list[Any]) -> str:
    """What mrcfile's warnings (permissive mode) say is wrong with a file without a data block."""
    texts = [str(w.message) for w in caught]
    if any("Map ID string not found" in t for t in texts):
        return "not an MRC file, or a damaged one (its header has no 'MAP ' stamp)"
    for t in texts:
        m = re.search(r"[Uu]nrecognised mode '?(-?\d+)'?", t)
        if m:
            return f"unsupported MRC mode {m.group(1)}"
    for t in texts:
        m = re.search(r"Expected (\d+) bytes in data block but limit is (\d+)", t)
        if m:
            return f"truncated MRC file (data block of {m.group(2)} bytes, {m.group(1)} expected)"
    return "no data block" + (f" ({texts[0]})" if texts else "")


_ONE_SAMPLE = "e.g. a sample from `simaq-factory export --format tiff`"

#: Å per length unit, as TIFF (ImageJ ``unit``, resolution unit) and NRRD (``space units``, ``units``) name them.
_UNITS_A = {"nm": 10.0, "nanometer": 10.0, "nanometers": 10.0, "um": 1e4, "\u00b5m": 1e4, "\u03bcm": 1e4,
            "micron": 1e4, "microns": 1e4, "micrometer": 1e4, "micrometers": 1e4, "mm": 1e7,
            "millimeter": 1e7, "cm": 1e8, "a": 1.0, "å": 1.0, "angstrom": 1.0, "angstroms": 1.0}


def _space_directions(header: dict[str, Any]) -> list[Any]:
    """An NRRD header's direction vectors of its spatial axes (file order: fastest first); the
    entries of other axes (None, or NaN vectors) are left out."""
    return [d for d in header.get("space directions", [])
            if d is not None and np.all(np.isfinite(np.asarray(d, float)))]


def _nrrd_in_angstrom(header: dict[str, Any], spacing: tuple[float, ...]) -> tuple[float, ...]:
    """NRRD spacings in Å when the header names one known length unit for its axes (``space units``
    with ``space directions``, per-axis ``units`` with ``spacings``: 3D Slicer writes mm); as they are
    otherwise (NRRD without units, and what predict writes: Å numbers)."""
    units = header.get("space units") if "space units" in header else header.get("units")
    names = {str(u).strip().lower() for u in (units or []) if u is not None and str(u).strip() not in ("", "???")}
    if len(names) != 1 or next(iter(names)) not in _UNITS_A:
        return spacing
    scale = _UNITS_A[next(iter(names))]
    return tuple(v * scale for v in spacing)


def _imagej_text(value: Any) -> str:
    """An ImageJ metadata string as meant: ImageJ writes non-ASCII characters as ``\\uXXXX``
    escapes (``unit=\\u00B5m`` for µm), which tifffile passes through as they are."""
    text = str(value)
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _read_tiff(p: Path) -> Volume:
    """A TIFF stack and, when it says so in known units, its voxel size in Å (ImageJ ``spacing`` for z,
    the X/YResolution tags for x and y)."""
    tifffile = optional("tifffile", "reading TIFF")

    with quiet_logger("tifffile"):  # its own "ERROR tifffile: ..." line would come before ours
        with tifffile.TiffFile(p) as tif:
            try:
                series = tiff_volume_series(tif)
            except ValueError as err:
                raise BadInput(str(p), str(err)) from None
            data = read_tiff_volume(tif, series)
            meta = tif.imagej_metadata or {}
            page = series.keyframe
            tags = page.tags
            res = [tags[k].value for k in ("YResolution", "XResolution") if k in tags]
            res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
    unit = _imagej_text(meta.get("unit", "")).strip().lower() if meta else {3: "cm", 4: "mm", 5: "um"}.get(res_unit, "")
    scale = _UNITS_A.get(unit)
    size = None
    if scale and len(res) == 2 and all(den and num for num, den in res):
        y, x = (scale * den / num for num, den in res)  # resolution: pixels per unit
        z = float(meta.get("spacing", 0) or 0) * scale
        size = (z if z > 0 else x, y, x) if data.ndim >= 3 else None
    return Volume(data, size)


def _read_any(p: Path) -> Volume:
    suf = volume_suffix(p)
    if suf in (".tif", ".tiff"):
        return _read_tiff(p)
    if suf in (".mrc", ".rec", ".map"):
        import warnings

        mrcfile = optional("mrcfile", "reading MRC")
        with warnings.catch_warnings(record=True) as caught:  # permissive mode warns: say it once
            warnings.simplefilter("always")
            f = mrcfile.open(p, permissive=True)
        with f:
            if f.data is None:
                raise BadInput(str(p), f"cannot read volume: {_mrc_problem(caught)}")
            vs = f.voxel_size
            size = (float(vs.z), float(vs.y), float(vs.x))
            h = f.header
            try:  # IMOD's unsigned bytes as uint8, (z, y, x) whatever MAPC/MAPR/MAPS say
                data = read_mrc_data(f)
            except ValueError as err:
                raise BadInput(str(p), str(err)) from None
            # NZSTART, NYSTART, NXSTART run along the file's sections, rows and columns
            labels = axis_labels(h)
            starts = (int(h.nzstart), int(h.nystart), int(h.nxstart))
            start = tuple(starts[labels.index(axis)] for axis in (1, 2, 3)) if sorted(labels) == [1, 2, 3] \
                else None
            origin = (float(h.origin.x), float(h.origin.y), float(h.origin.z))
            return Volume(data, size if all(s > 0 for s in size) else None, mrc_origin=origin,
                          mrc_start=start)  # type: ignore[arg-type]
    if suf == ".nrrd":
        nrrd = optional("nrrd", "reading NRRD")
        arr, header = nrrd.read(str(p), index_order="C")
        spacing = None
        if "spacings" in header:  # one per axis, fastest first; non-spatial axes NaN
            per_axis = np.asarray(header["spacings"], dtype=float)[::-1]
            spatial = _nrrd_spatial_axes(header, arr.ndim)
            if arr.ndim > 3 and spatial is not None:  # the spatial axes by their kind (one may be 1 long)
                keep = [k for k, is_space in enumerate(spatial) if is_space]
            else:
                keep = [k for k, n in enumerate(arr.shape) if n != 1] if arr.ndim > 3 else range(arr.ndim)
            picked = [float(per_axis[k]) for k in keep] if len(per_axis) == arr.ndim else []
            spacing = tuple(picked) if len(picked) == 3 and all(np.isfinite(picked)) else None
        elif len(dirs := _space_directions(header)) == 3:
            spacing = tuple(float(np.linalg.norm(d)) for d in dirs[::-1])
        if spacing:  # both branches give three spacings or none
            spacing = _nrrd_in_angstrom(header, spacing)
        return Volume(arr, spacing, dict(header))
    if suf == ".npy":
        try:
            return Volume(np.load(p, allow_pickle=False))
        except ValueError as err:  # numpy's words advise loading it unsafely: it is not a plain array file
            if "pickled" not in str(err):
                raise
            raise BadInput(str(p), "not a NumPy array file (.npy of numbers): no .npy header, or Python "
                                   "objects inside") from None
    if suf == ".zarr":
        import zarr

        node = zarr.open(p, mode="r")
        if isinstance(node, zarr.Group):
            raise BadInput(str(p), "is a Zarr group (a simaq-factory dataset's store?), not an array: give a "
                                   f"single 3D array ({_ONE_SAMPLE}), or score a dataset with `simaq-train evaluate`")
        size = node.attrs.get("voxel_size_zyx")  # what write_volume records (Å)
        ok = isinstance(size, list) and len(size) == 3 and all(
            isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in size)
        return Volume(np.asarray(node[...]), tuple(float(v) for v in size) if ok else None)
    if p.is_dir() and (p / "dataset.zarr").is_dir():
        raise BadInput(str(p), f"is a simaq-factory dataset, not a volume: give a single 3D array ({_ONE_SAMPLE}), "
                               "or use `simaq-train evaluate`")
    raise BadInput(str(p), f"unsupported volume format (expected one of {', '.join(READ_SUFFIXES)})")


def _nrrd_spatial_axes(header: dict[str, Any], ndim: int) -> list[bool] | None:
    """Per array axis (C order, as read), whether an NRRD header's ``kinds`` call it spatial
    (``domain`` / ``space``); None without ``kinds`` for every axis."""
    kinds = header.get("kinds") if header else None
    if kinds is None or len(kinds) != ndim:
        return None
    return [str(k).lower() in ("domain", "space") for k in list(kinds)[::-1]]  # NRRD lists the fastest first


def read_volume_meta(path: str | Path) -> Volume:
    """Read a 3D volume (any supported format); BadInput naming the file otherwise."""
    p = Path(path)
    if not p.exists():
        raise BadInput(str(p), "file not found")
    if p.is_file() and p.stat().st_size == 0:
        raise BadInput(str(p), "empty file")
    try:
        vol = _read_any(p)
    except (BadInput, MissingExtra):
        raise
    except Exception as err:  # noqa: BLE001 - any decoder error is bad input
        raise BadInput(str(p), f"cannot read volume ({type(err).__name__}: {err})") from None
    data = vol.data
    spatial = _nrrd_spatial_axes(vol.header, data.ndim) if data.ndim > 3 else None
    if spatial is not None:  # a length-1 axis of another kind (a Slicer 'list' of one layer) goes
        data = data.reshape([n for n, is_space in zip(data.shape, spatial) if n != 1 or is_space])
    # a Slicer segmentation cropped to one painted slice is (1, Y, X): its spatial axes are kept
    arr = data if is_slicer_seg(p) and data.ndim == 3 else np.squeeze(data)
    if arr.ndim == 4 and is_slicer_seg(p):
        raise BadInput(str(p), "multi-layer Slicer segmentation (overlapping segments); "
                               "export it as a single labelmap")
    if arr.ndim != 3:
        dropped = f" ({vol.data.shape} without its length-1 axes)" if arr.shape != vol.data.shape else ""
        raise BadInput(str(p), f"expected a 3D volume, got shape {arr.shape}{dropped}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == bool):
        raise BadInput(str(p), f"unsupported data type {arr.dtype}")
    vol.data = arr
    return vol


def read_volume(path: str | Path) -> np.ndarray:
    """A (Z, Y, X) array from a TIFF, MRC, NRRD, NPY or single-array Zarr file."""
    return read_volume_meta(path).data


# --- 3D Slicer segmentations -------------------------------------------------------------------

_ALIASES = {"membrane": "cell", "cytoplasm": "cell", "lipid": "lipid_droplet", "ld": "lipid_droplet",
            "lipid_droplets": "lipid_droplet", "vacuoles": "vacuole", "cells": "cell"}


def _norm_name(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return _ALIASES.get(key, key)


def slicer_segments(header: dict[str, Any]) -> dict[int, str]:
    """Label value → segment name of a single-layer ``.seg.nrrd`` header ({} when absent)."""
    out: dict[int, str] = {}
    for key, value in header.items():
        m = re.fullmatch(r"Segment(\d+)_Name", str(key))
        if not m:
            continue
        label = header.get(f"Segment{m.group(1)}_LabelValue")
        layer = header.get(f"Segment{m.group(1)}_Layer", "0")
        if label is None or str(layer).strip() not in ("0", ""):
            continue
        out[int(str(label).strip())] = str(value)
    return out


def slicer_to_classes(vol: Volume, class_names: list[str], path: str) -> np.ndarray:
    """Slicer labelmap → uint8 class ids with 255 = unlabelled.

    The array is first placed into the reference image's extent when Slicer cropped it
    (``Segmentation_ReferenceImageExtentOffset``; the caller checks the final shape). Value 0 is
    unlabelled. When every segment is named after a class (``cell``/``membrane``, ``vacuole``,
    ``lipid droplet``, ``background`` …; a trailing number is an instance: ``Cell 2`` is a cell)
    values map by name; when no segment is (Slicer's default ``Segment_1`` …, or none at all; other
    names with a warning), by the reference's convention value v → class v − 1 (1 background,
    2 cell, 3 vacuole, 4 lipid droplet); a mix, some segments named after a class and some not, is
    refused (by value it shifted every class).
    """
    data = vol.data.astype(np.int64)
    if data.min(initial=0) < 0 or data.max(initial=0) > 255:
        raise BadInput(path, "Slicer label values must lie in 0..255")
    segments = slicer_segments(vol.header)
    wanted = {_norm_name(n): c for c, n in enumerate(class_names)}

    def class_of(name: str) -> int | None:  # "Vacuole", "lipid droplet", "Cell 2" (one cell of several)
        key = _norm_name(name)
        if key in wanted:
            return wanted[key]
        bare = re.sub(r"_\d+$", "", key)
        return wanted.get(_ALIASES.get(bare, bare))

    lut = np.full(int(max(data.max(initial=0), max(segments, default=0))) + 1, -1, np.int64)
    lut[0] = 255
    named = {value: class_of(name) for value, name in segments.items()}
    if segments and all(c is not None for c in named.values()):
        for value, c in named.items():
            lut[value] = c
    elif all(c is None for c in named.values()):  # no class names (or none at all): the reference's values
        lut[1:] = np.arange(len(lut) - 1)
        if not all(re.fullmatch(r"segment_\d+", _norm_name(n)) for n in segments.values()):
            log.warning("%s: no segment is named after a class of the dataset (%s); its label values are "
                        "read by the reference's convention, value v -> class v - 1", path, ", ".join(class_names))
    else:
        # some segments named after classes and others not: by value would shift every class
        odd = sorted(n for v, n in segments.items() if named[v] is None)
        raise BadInput(path, f"segment(s) {', '.join(repr(n) for n in odd)} are not classes of the dataset "
                             f"({', '.join(class_names)}) while others are: rename them in Slicer, or remove them")
    out = lut[data]
    if (out < 0).any():
        raise BadInput(path, "segment label values without a class")
    return out.astype(np.uint8)


def slicer_offset(header: dict[str, Any]) -> tuple[int, int, int] | None:
    """(z, y, x) offset of a cropped Slicer segmentation inside its reference image, if recorded."""
    raw = header.get("Segmentation_ReferenceImageExtentOffset")
    if raw is None:
        return None
    vals = [int(v) for v in str(raw).split()]
    if len(vals) != 3:
        return None
    return vals[2], vals[1], vals[0]


def place_into(arr: np.ndarray, offset_zyx: tuple[int, int, int], shape: tuple[int, ...],
               fill: int) -> np.ndarray:
    """``arr`` placed at ``offset_zyx`` in a ``shape`` array of ``fill`` (parts outside are cut)."""
    out = np.full(shape, fill, dtype=arr.dtype)
    src, dst = [], []
    for o, n, size in zip(offset_zyx, arr.shape, shape):
        lo, hi = max(o, 0), min(o + n, size)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo - o, hi - o))
    out[tuple(dst)] = arr[tuple(src)]
    return out


# --- writing -----------------------------------------------------------------------------------

def frame_permutation(tilt_axis: int, beam_axis: int | None, tilt_key: str = "--tilt-axis",
                      beam_key: str = "--beam-axis") -> tuple[int, int, int]:
    """``numpy.transpose`` order that brings a stored volume into the training frame: tilt axis
    first, the axis the beam travelled along at 0° tilt second (the rows of each slice, where the
    missing wedge lies in the synthetic data), the remaining axis last. ``beam_axis`` None: the
    lower-numbered of the two others. Bad axes are :class:`BadInput` naming ``tilt_key`` /
    ``beam_key``."""
    if isinstance(tilt_axis, bool) or tilt_axis not in (0, 1, 2):
        raise BadInput(tilt_key, f"expected 0, 1 or 2, got {tilt_axis!r}")
    others = [a for a in (0, 1, 2) if a != tilt_axis]
    if beam_axis is None:
        beam_axis = others[0]
    if isinstance(beam_axis, bool) or beam_axis not in others:
        raise BadInput(beam_key, f"expected one of {others} (an axis other than the tilt axis {tilt_axis}), "
                                 f"got {beam_axis!r}")
    return (tilt_axis, beam_axis, next(a for a in others if a != beam_axis))


#: Attribute of the Zarr arrays ``write_volume`` writes: ``--overwrite`` replaces such a store only.
WRITTEN_BY = "written_by"
WRITTEN_BY_VALUE = "simaq-train predict"


def is_own_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a single Zarr array that :func:`write_volume` wrote (its ``written_by``
    attribute), and nothing else: never a dataset, a group or a folder of other files."""
    import zarr

    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return False
    try:
        arr = zarr.open_array(p, mode="r")
        return bool(arr.attrs.get(WRITTEN_BY) == WRITTEN_BY_VALUE)
    except Exception:  # noqa: BLE001 - anything that is not such an array
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(path: str | Path, *, overwrite: bool = False, source: str | Path | None = None) -> Path:
    """BadInput unless ``path`` has a writable format suffix, is not in the way of what that format
    writes (a Zarr folder, other formats a file), its parent is, or can be created as, a writable
    folder, and it does not exist — or ``overwrite`` is given and it is a file, or a Zarr array this
    function's :func:`write_volume` wrote. ``source`` (the input) is never a valid output."""
    from simaq_factory.errors import check_output_dir

    p = Path(path)
    if p.is_dir() and p.suffix.lower() != ".zarr":
        raise BadInput(str(p), "is a directory; give a file name, e.g. "
                               f"{p / 'segmentation.tif'}")
    if p.suffix.lower() not in WRITE_SUFFIXES:
        raise BadInput(str(p), f"unsupported output format (expected one of {', '.join(WRITE_SUFFIXES)})")
    if p.exists() and not p.is_dir() and p.suffix.lower() == ".zarr":
        raise BadInput(str(p), "exists and is not a folder (a Zarr output is one)")
    parent = next((q for q in p.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BadInput(str(p), f"{parent} is not a folder")
    if source is not None and (_same_file(p, Path(source))
                               or os.path.realpath(p) == os.path.realpath(source)):
        raise BadInput(str(p), "is the input tomogram; write the output elsewhere")
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise BadInput(str(p), "exists; use --overwrite")
        if p.is_dir() and not is_own_zarr(p):
            raise BadInput(str(p), "exists and is not a Zarr array written by predict; not replaced, "
                                   "even with --overwrite")
    check_output_dir(p.parent if str(p.parent) else Path("."), str(p))
    writer = SUFFIX_MODULES.get(volume_suffix(p))
    if writer is not None:  # before the work whose result it would write
        optional(writer, f"writing {p.name}")
    return p


def slicer_header(class_names: list[str]) -> dict[str, str]:
    """Header fields of a single-layer 3D Slicer segmentation whose label value ``c + 1`` is the
    segment named ``class_names[c]`` (0 = no segment): what :func:`slicer_to_classes` maps back to
    class ``c`` by name, and what Slicer shows as named segments."""
    header = {"Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ContainedRepresentationNames": "Binary labelmap|"}
    for c, name in enumerate(class_names):
        header.update({f"Segment{c}_ID": f"Segment_{c + 1}", f"Segment{c}_Name": str(name),
                       f"Segment{c}_LabelValue": str(c + 1), f"Segment{c}_Layer": "0"})
    return header


def _nrrd_space(like: Volume | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """``space``, ``space directions`` and ``space origin`` of the NRRD volume ``like`` was read from,
    when it has them for three axes and the same shape; else nothing."""
    h = like.header if like is not None else {}
    dirs = _space_directions(h)
    if like is None or like.data.shape != tuple(shape) or len(dirs) != 3:
        return {}
    out: dict[str, Any] = {"space directions": np.asarray(dirs, dtype=float)}
    for key in ("space", "space dimension", "space origin", "space units"):
        if key in h and not (key == "space dimension" and "space" in h):
            out[key] = h[key]
    return out


def _nrrd_spacings(like: Volume | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """``spacings`` (and ``units``) of the 3D NRRD volume ``like`` was read from, when it has them and
    the same shape; else nothing."""
    h = like.header if like is not None else {}
    if like is None or like.data.shape != tuple(shape) or "spacings" not in h:
        return {}
    spacings = np.asarray(h["spacings"], dtype=float)
    if spacings.shape != (3,) or not np.all(np.isfinite(spacings)):
        return {}
    out: dict[str, Any] = {"spacings": spacings}
    if "units" in h and len(h["units"]) == 3:
        out["units"] = list(h["units"])
    return out


def _write_to(tmp: Path, suf: str, volume: np.ndarray, voxel_size: tuple[float, float, float] | None,
              slicer_classes: list[str] | None = None, like: Volume | None = None) -> None:
    if suf in (".tif", ".tiff"):
        tifffile = optional("tifffile", "writing TIFF")

        if voxel_size is None:
            tifffile.imwrite(tmp, volume, photometric="minisblack")  # (3 or 4, Y, X) is not RGB
            return
        z, y, x = (v / 1e4 for v in voxel_size)  # Å → µm
        if volume.dtype in (np.uint8, np.uint16, np.float32):  # what ImageJ hyperstacks hold
            tifffile.imwrite(tmp, volume, imagej=True, resolution=(1.0 / x, 1.0 / y),
                             metadata={"spacing": z, "unit": "micron", "axes": "ZYX"})
        else:  # in-plane pixel size only, in the TIFF tags
            tifffile.imwrite(tmp, volume, photometric="minisblack", resolution=(1.0 / x, 1.0 / y),
                             resolutionunit="MICROMETER")
    elif suf in (".mrc", ".rec", ".map"):
        mrcfile = optional("mrcfile", "writing MRC")

        data = volume
        if volume.dtype == np.uint8:
            # MRC mode 0 is signed 8-bit; class ids < 128 fit, larger values go to 16-bit
            data = volume.astype(np.int8) if volume.max(initial=0) < 128 else volume.astype(np.int16)
        with mrcfile.new(tmp, overwrite=True) as f:
            f.set_data(np.ascontiguousarray(data))
            if voxel_size is not None:
                f.voxel_size = (voxel_size[2], voxel_size[1], voxel_size[0])
            if like is not None and like.mrc_origin is not None:  # overlays its tomogram (IMOD, ChimeraX)
                f.header.origin = like.mrc_origin
            if like is not None and like.mrc_start is not None:
                f.header.nxstart, f.header.nystart, f.header.nzstart = like.mrc_start
    elif suf == ".nrrd":
        nrrd = optional("nrrd", "writing NRRD")

        # C order, as read; the header's per-axis fields run fastest axis first: (x, y, z)
        header: dict[str, Any] = {"encoding": "gzip"}
        space = _nrrd_space(like, volume.shape)
        if space:  # the input's world frame, so the result overlays it (3D Slicer)
            header.update(space)
        elif (spacing := _nrrd_spacings(like, volume.shape)):  # the input's, in its own units
            header.update(spacing)
        elif voxel_size is not None:  # Å, said so (an NRRD without units is read as mm by Slicer)
            header["spacings"] = np.asarray(voxel_size[::-1], dtype=float)
            header["units"] = ["angstrom"] * 3
        if slicer_classes is not None:  # Slicer's labelmap: 0 is no segment, class c is value c + 1
            header.update(slicer_header(slicer_classes))
            volume = (volume.astype(np.int64) + 1).astype(np.uint8)
        nrrd.write(str(tmp), np.ascontiguousarray(volume), header, index_order="C")
    elif suf == ".zarr":
        import zarr

        arr = zarr.create_array(tmp, shape=volume.shape, dtype=volume.dtype,
                                chunks=(min(16, volume.shape[0]),) + volume.shape[1:])
        arr[...] = volume
        arr.attrs.update({"axes": ["z", "y", "x"], WRITTEN_BY: WRITTEN_BY_VALUE,
                          **({"voxel_size_zyx": list(voxel_size)} if voxel_size else {})})
    else:
        with open(tmp, "wb") as f:
            np.save(f, volume)


def write_volume(path: str | Path, volume: np.ndarray,
                 voxel_size: tuple[float, float, float] | None = None, *, overwrite: bool = False,
                 source: str | Path | None = None, class_names: list[str] | None = None,
                 like: Volume | None = None) -> Path:
    """Write (Z, Y, X) ``volume`` as TIFF, MRC, NRRD (C order), Zarr or NPY (by suffix), atomically (a temporary
    name, renamed). An existing ``path`` is refused unless ``overwrite`` (see :func:`check_output_path`),
    also one that appears while the volume is written (:func:`_place_new`).

    ``NAME.seg.nrrd`` is a 3D Slicer segmentation: ``volume`` holds class ids, ``class_names`` names
    them, and the file holds value ``c + 1`` for class ``c`` with one named segment per class (read
    back as the same class ids, and as named segments in Slicer). An MRC output takes the origin and
    first-voxel indices of ``like`` when it was read from an MRC file (the volume it segments)."""
    p = check_output_path(path, overwrite=overwrite, source=source)
    suf = p.suffix.lower()
    slicer = is_slicer_seg(p)
    if slicer and (class_names is None or int(volume.max(initial=0)) >= len(class_names)
                   or len(class_names) > 254):
        raise BadInput(str(p), "a .seg.nrrd (3D Slicer segmentation) needs a name for every class id; "
                               "write a plain .nrrd of class ids instead")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(str(p), f"cannot create the output directory ({err.strerror})") from None
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    old = p.with_name(f".{p.name}.old-{os.getpid()}")
    try:
        _write_to(tmp, suf, volume, voxel_size, list(class_names) if slicer and class_names else None, like)
        if not overwrite:
            _place_new(tmp, p)
        else:
            if p.is_dir():
                if not is_own_zarr(p):  # checked again: never remove anything else
                    raise BadInput(str(p), "exists and is not a Zarr array written by predict; not replaced")
                # a folder cannot be replaced by a rename: the earlier Zarr is renamed aside, the new one
                # renamed in, and only then the earlier one removed, so an interrupt at any point leaves
                # one whole result at ``p`` (was: removed first, so Ctrl-C between the removal and the
                # rename, or inside it, left no output, or a half-deleted Zarr reading as background)
                os.replace(p, old)
            os.replace(tmp, p)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if old.is_dir():
            if p.exists():  # the new one is in place
                shutil.rmtree(old, ignore_errors=True)
            else:  # stopped before the new one was renamed in: the earlier result goes back
                os.replace(old, p)
    if suf == ".zarr":
        _sweep_replaced(p)
    return p


def _place_new(tmp: Path, p: Path) -> None:
    """Put the written ``tmp`` at ``p`` without replacing anything there: :class:`BadInput` ("exists;
    use --overwrite") when something appeared at ``p`` since :func:`check_output_path` (another
    predict to the same output finished first; was: replaced by a rename, and its Zarr removed). A
    file is hard-linked into place, which fails on an existing name, then its temporary name
    removed; a filesystem without hard links gets a last check and a rename. A Zarr folder is
    renamed, which fails onto a file or a folder that is not empty; an empty one is checked for."""
    taken = BadInput(str(p), "exists; use --overwrite")
    if tmp.is_dir():
        if p.exists() or p.is_symlink():  # a rename would replace an empty folder
            raise taken
        try:
            os.rename(tmp, p)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise taken from None
            raise
        return
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise taken from None
    except OSError:  # no hard links here (some network and FUSE filesystems)
        if p.exists() or p.is_symlink():
            raise taken from None
        os.replace(tmp, p)
        return
    tmp.unlink()


def _sweep_replaced(p: Path) -> None:
    """Remove earlier results of ``p`` that a killed :func:`write_volume` left renamed aside
    (``.NAME.old-PID``, Zarr arrays it wrote): ``p`` holds the newer one."""
    prefix = f".{p.name}.old-"
    for stale in p.parent.iterdir():
        if stale.name.startswith(prefix) and stale.name[len(prefix):].isdigit() and is_own_zarr(stale):
            shutil.rmtree(stale, ignore_errors=True)
