"""Open the ground truth (a dataset directory) and predictions (a Zarr or a folder of TIFF/MRC files).

Every problem a user can fix (a missing path, a shape or index mismatch, an unreadable file) raises
:class:`~simaq_factory.errors.BadInput` naming the path or flag, so the CLI prints one line, exit 2.
A damaged store (a chunk that cannot be decoded, a shard file that no longer matches its checksum)
is not bad input but a runtime failure: :class:`DamagedStore`, one line naming the array and sample,
exit 1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from simaq_factory.errors import SUFFIX_MODULES, BadInput, DamagedData, MissingExtra, optional, quiet_logger
from simaq_factory.store.layout import GROUP_NAME, PROVENANCE_DIR
from simaq_factory.store.outdir import RESOLVED
from simaq_factory.tomo.geometry import Geometry

__all__ = ["DamagedStore", "GroundTruth", "Prediction", "open_ground_truth", "open_prediction"]

VOLUME_FILE_SUFFIXES = (".tif", ".tiff", ".mrc", ".rec", ".map")
#: a file's stem is its sample index, optionally after a word and an underscore: 7, 000007, sample_7
_INDEX_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*_)?(\d+)$")
#: ``export``'s names (``sample_000007_recon.mrc``): the index and what the file holds.
_KIND_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*_)?(\d+)_(recon|labels)$")
#: ``export``'s one file per acquisition axis of a three-axis dataset (``sample_000007_recon_axis1.mrc``)
_AXIS_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*_)?\d+_(recon|labels)_axis\d$")


class DamagedStore(DamagedData):
    """A stored array cannot be read back as written (a corrupt chunk): a runtime failure, exit 1.
    ``str(err)`` is one line naming the array (``<path>/<array>``), the sample and what to run."""


def _why(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_sample(arr: Any, where: str, key: int | tuple[int, ...], hint: str = "") -> np.ndarray:
    """``arr[key]`` as a NumPy array (``key``: a sample index, or a tuple starting with one);
    :class:`DamagedStore` naming ``where`` (the array's path) and the sample when a chunk cannot be
    decoded. ``hint`` (e.g. "; run `simaq-factory verify OUT`") ends the message."""
    try:
        return np.asarray(arr[key])
    except Exception as err:  # noqa: BLE001 - a codec/checksum error of a stored chunk
        i = key[0] if isinstance(key, tuple) else key
        raise DamagedStore(f"{where}, sample {i}: chunk cannot be decoded ({_why(err)}){hint}") from err


@dataclass
class GroundTruth:
    """A built dataset: its arrays, geometry facts and per-sample provenance.

    ``group`` is the read-only ``dataset.zarr``; ``spans_deg[i]`` / ``n_cells[i]`` come from the
    provenance record of sample ``i``; ``classes`` maps label value -> name (ignore label excluded).
    ``n_axes`` is 1 or 3 (``acquisition.axes``); ``spans_by_axis[i][k]`` is the tilt span of the
    acquisition about volume axis ``k`` (``spans_deg[i]`` is axis 0's).
    """

    out: Path
    group: Any
    recipe: dict[str, Any]
    recipe_id: str
    n_samples: int
    shape: tuple[int, int, int]
    center: float
    radius: float
    classes: dict[int, str]
    ignore_label: int
    spans_deg: list[float]
    n_cells: list[int]
    n_axes: int = 1
    spans_by_axis: list[list[float]] = field(default_factory=list)

    def read(self, name: str, key: int | tuple[int, ...]) -> np.ndarray:
        """``group[name][key]`` (``key``: sample index, or a tuple starting with one) as a NumPy
        array; :class:`DamagedStore` naming the array and sample when a chunk cannot be decoded."""
        return read_sample(self.group[name], f"{self.out / GROUP_NAME / name}", key, self.verify_hint)

    @property
    def verify_hint(self) -> str:
        return f"; run `simaq-factory verify {self.out}`"

    def shard_damage(self, name: str, i: int) -> str | None:
        """Why the shard file holding sample ``i`` of array ``name`` is damaged (its sha256 differs
        from the one in its provenance record), or None when it matches or cannot be checked (no
        recipe layout or checksum: e.g. a dataset not written by ``build``). Reads the whole file:
        for explaining a failure, not for every read."""
        from simaq_factory.store.dataset import read_provenance, sha256_file, shard_file
        from simaq_factory.store.inspect import dataset_specs, open_dataset_recipe

        try:
            recipe, _ = open_dataset_recipe(self.out)
            spec = dataset_specs(recipe)[name]
            s = i // int(recipe.dataset.samples_per_shard)
            recorded = ((read_provenance(self.out, s) or {}).get("checksums") or {}).get(name)
            path = shard_file(self.out, spec, s)
        except Exception:  # noqa: BLE001 - nothing to compare with: cannot tell
            return None
        if not recorded or sha256_file(path) == recorded:
            return None
        return f"shard file {path.relative_to(self.out / GROUP_NAME / name)} does not match its checksum"

    @property
    def pred_shape(self) -> tuple[int, ...]:
        """Shape of one sample of a prediction: (Z, Y, X), or (3, Z, Y, X) for three axes."""
        return ((self.n_axes,) if self.n_axes > 1 else ()) + self.shape

    def fov(self) -> np.ndarray:
        """Bool (Y, X) field-of-view disk (see :mod:`simaq_factory.score.metrics`)."""
        from simaq_factory.score.metrics import fov_mask

        return fov_mask(self.shape[1], self.center, self.radius)


def open_ground_truth(out: Path) -> GroundTruth:
    """Open the dataset directory ``out`` (as written by ``simaq-factory build``) for scoring."""
    resolved = out / RESOLVED
    if out.exists() and not out.is_dir():
        raise BadInput(str(out), "is a file, not a dataset directory (give the directory `build -o` wrote)")
    if not out.is_dir():
        raise BadInput(str(out), "no such dataset directory")
    if not resolved.exists() or not (out / GROUP_NAME).exists():
        raise BadInput(str(out), "not a simaq-factory dataset (no recipe.resolved.json / dataset.zarr)")
    try:
        payload = json.loads(resolved.read_text())
        recipe, rid = payload["recipe"], payload["recipe_id"]
        group = zarr.open_group(out / GROUP_NAME, mode="r")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInput(str(out), f"unreadable dataset: {err}") from None
    card = dict(group.attrs)
    for name in ("phantom", "labels"):
        if name not in group:
            raise BadInput(str(out), f"dataset has no {name!r} array")
    n, z, y, x = group["phantom"].shape
    center_conv = recipe.get("reconstruction", {}).get("center", "astra")
    geom = Geometry(n=y, angles=(0.0,), center=center_conv)
    label_map = card.get("label_map", {"0": "background", "1": "cell", "2": "vacuole", "3": "lipid_droplet"})
    ignore = int(card.get("ignore_label", 255))
    classes = {int(k): str(v) for k, v in label_map.items() if int(k) != ignore}
    n_axes = int(recipe.get("acquisition", {}).get("axes", 1))
    spans, cells = _provenance(out, n, n_axes)
    return GroundTruth(
        out=out, group=group, recipe=recipe, recipe_id=rid, n_samples=n, shape=(z, y, x),
        center=geom.image_center, radius=geom.circle_radius, classes=dict(sorted(classes.items())),
        ignore_label=ignore, spans_deg=[s[0] for s in spans], n_cells=cells, n_axes=n_axes,
        spans_by_axis=spans,
    )


def _provenance(out: Path, n: int, n_axes: int) -> tuple[list[list[float]], list[int]]:
    """Per sample: the tilt span of each acquisition axis, and the cell count."""
    spans: list[list[float] | None] = [None] * n
    cells: list[int | None] = [None] * n
    for path in sorted((out / PROVENANCE_DIR).glob("shard-*.json")):
        try:
            records = json.loads(path.read_text())["sample_records"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BadInput(str(path), f"unreadable provenance record: {err}") from None
        for rec in records:
            i = int(rec["index"])
            if 0 <= i < n:
                acqs = rec.get("acquisitions") or [{"angles": rec["angles"]}]
                if len(acqs) != n_axes:
                    raise BadInput(str(path), f"sample {i} records {len(acqs)} acquisition(s), the "
                                   f"recipe has acquisition.axes = {n_axes}")
                spans[i] = [float(a["angles"]["span_deg"]) for a in acqs]
                cells[i] = int(rec["n_cells"])
    missing = [i for i in range(n) if spans[i] is None]
    if missing:
        raise BadInput(
            str(out), f"{len(missing)} of {n} samples are not built (first: {missing[0]}); "
            "finish the build (run it again) before scoring"
        )
    return [s for s in spans if s is not None], [int(c) for c in cells if c is not None]


@dataclass
class Prediction:
    """One prediction: which samples it covers and readers for its ``recon`` / ``labels`` volumes.

    ``read[kind](i)`` returns sample ``i`` as a NumPy (Z, Y, X) array, or (3, Z, Y, X) — one volume
    per acquisition axis — when the dataset has ``acquisition.axes: 3``.
    """

    path: Path
    name: str
    indices: list[int]
    kinds: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    read: dict[str, Callable[[int], np.ndarray]] = field(default_factory=dict)
    #: a flat folder's files taken for segmentations because they hold integers (not said by a
    #: labels/ sub-folder or --only): an error about their ids says so
    labels_by_dtype: bool = False
    #: a folder prediction's files, by kind and sample index (empty for a Zarr): an error about a
    #: sample's values names its file
    files: dict[str, dict[int, Path]] = field(default_factory=dict)


def _labels_dtype_problem(dtype: np.dtype) -> str | None:
    """Why a volume of ``dtype`` cannot be a segmentation, or None."""
    if dtype == np.bool_:
        return ("a boolean mask, not class ids: save the segmentation as integer class ids (the dataset's "
                "label map; 0 background), a mask of one class as 0 and that class's id")
    if not np.issubdtype(dtype, np.integer):
        return f"labels must be integers, got {dtype}"
    return None


def open_prediction(path: Path, gt: GroundTruth, only: str = "auto") -> Prediction:
    """Open ``path`` — a Zarr group with ``recon`` and/or ``labels`` (N, Z, Y, X) arrays, or a folder
    of volumes named by sample index (``7.tif``, ``000007.mrc``, ``sample_7.tiff``; float files are
    reconstructions, integer files segmentations; or sub-folders ``recon/`` and ``labels/``).
    For a dataset with three acquisition axes every prediction has the axis dimension too:
    (N, 3, Z, Y, X) arrays, (3, Z, Y, X) files — entry k for the acquisition about volume axis k.

    ``only`` ("auto", "recon", "labels") restricts which kinds are scored. Shapes are checked
    against the ground truth here; a folder may hold any subset of the indices.
    """
    if not path.exists():
        raise BadInput(str(path), "prediction not found")
    if not path.is_dir():
        raise BadInput(str(path), "a prediction is a Zarr directory or a folder of TIFF/MRC files")
    if (path / "zarr.json").exists() or (path / ".zgroup").exists():
        pred = _open_zarr(path, gt, only)
    elif (path / GROUP_NAME / "zarr.json").exists():
        pred = _open_zarr(path / GROUP_NAME, gt, only)
    else:
        pred = _open_folder(path, gt, only)
    source = _source_recipe_id(pred.attrs)
    if source is not None and source != gt.recipe_id:
        raise BadInput(str(path), f"is a prediction of another dataset (recipe id {source[:12]}…, the "
                                  f"ground truth's is {gt.recipe_id[:12]}…)")
    if only != "auto":
        if only not in pred.kinds:
            raise BadInput(str(path), f"holds no {only!r} prediction (found: {', '.join(pred.kinds)})")
        pred.kinds = [only]
    return pred


def _open_zarr(path: Path, gt: GroundTruth, only: str = "auto") -> Prediction:
    """The ``recon`` and ``labels`` arrays of a Zarr group, each checked; with ``only``, that one alone
    (the other is neither read nor checked: a three-axis dataset's own ``labels`` are (N, Z, Y, X))."""
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:  # noqa: BLE001 - any failure to open is a bad input
        raise BadInput(str(path), f"cannot open as a Zarr group: {err}") from None
    expect = (gt.n_samples, *gt.pred_shape)
    dims = "(N, 3, Z, Y, X)" if gt.n_axes > 1 else "(N, Z, Y, X)"
    pred = Prediction(path=path, name=_name(path, dict(group.attrs)), indices=list(range(gt.n_samples)),
                      kinds=[], attrs=dict(group.attrs))
    wanted = ("recon", "labels") if only == "auto" else (only,)
    for kind in wanted:
        if kind not in group:
            continue
        other = next(k for k in ("recon", "labels") if k != kind)
        alone = f" (or score its {other} alone: --only {other})" if only == "auto" and other in group else ""
        arr = group[kind]
        if not isinstance(arr, zarr.Array):
            raise BadInput(f"{path}/{kind}", "is a Zarr group, not an array: a prediction holds (N, Z, Y, X) "
                           "arrays named recon and/or labels, indexed like the dataset (an OME-Zarr export of "
                           "one sample is not one; score a folder of TIFF/MRC files instead)")
        if tuple(arr.shape) != expect:
            raise BadInput(f"{path}/{kind}", f"shape {tuple(arr.shape)} does not match the dataset's "
                           f"{dims} = {expect}{alone}")
        if kind == "labels" and (why := _labels_dtype_problem(arr.dtype)) is not None:
            raise BadInput(f"{path}/labels", f"{why}{alone}")
        if kind == "recon" and not _real_number_dtype(arr.dtype):
            raise BadInput(f"{path}/recon", f"reconstructions must be real numbers (float or integer), "
                           f"got {arr.dtype}{alone}")
        pred.kinds.append(kind)
        pred.read[kind] = (lambda a, where: lambda i: read_sample(a, where, i))(arr, f"{path}/{kind}")
    if not pred.kinds:
        if only != "auto":
            raise BadInput(str(path), f"holds no {only!r} prediction")
        raise BadInput(str(path), "Zarr group holds neither a 'recon' nor a 'labels' array")
    return pred


def _real_number_dtype(dtype: Any) -> bool:
    """float or integer; not complex, bool or anything else."""
    return bool(np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def _source_recipe_id(attrs: dict[str, Any]) -> str | None:
    """The recipe id a prediction says it was made from: a baseline's ``source.recipe_id``, or a
    dataset's own ``recipe_id`` (its card) when a dataset is passed as a prediction."""
    src = attrs.get("source")
    if isinstance(src, dict) and isinstance(src.get("recipe_id"), str):
        return src["recipe_id"]
    rid = attrs.get("recipe_id")
    return rid if isinstance(rid, str) else None


def _file_is_integer(path: Path) -> bool:
    """Whether a TIFF/MRC volume holds integers, from its header (no data read)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            tifffile = optional("tifffile", "reading TIFF")
            from simaq_factory.tiffio import tiff_volume_series

            with quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
                dtype = tiff_volume_series(tif).dtype
        else:
            mrcfile = optional("mrcfile", "reading MRC")
            with mrcfile.open(path, permissive=True, header_only=True) as mrc:
                dtype = mrcfile.utils.data_dtype_from_header(mrc.header)
    except MissingExtra:
        raise
    except Exception as err:  # noqa: BLE001 - a file we cannot read is a bad input
        raise BadInput(str(path), f"cannot read volume header: {err}") from None
    return bool(np.issubdtype(dtype, np.integer)) or dtype == np.bool_  # a mask is meant as labels


def _name(path: Path, attrs: dict[str, Any]) -> str:
    method = attrs.get("method")
    if isinstance(method, str) and method:
        return method
    path = path.resolve()  # "." has no name of its own
    stem = path.name if path.name != GROUP_NAME else path.parent.name
    return stem[: -len(".zarr")] if stem.endswith(".zarr") else stem


def _read_volume(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            from simaq_factory.tiffio import read_tiff_volume

            tifffile = optional("tifffile", "reading TIFF")
            with quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:  # tifffile's own "ERROR" line
                return read_tiff_volume(tif)  # one volume: pages of one shape, one series
        mrcfile = optional("mrcfile", "reading MRC")

        from simaq_factory.mrcio import read_mrc_data

        with mrcfile.open(path, permissive=True) as mrc:
            return read_mrc_data(mrc)  # IMOD's unsigned bytes as uint8; (z, y, x) by MAPC/MAPR/MAPS
    except MissingExtra:
        raise
    except Exception as err:  # noqa: BLE001 - a file we cannot read is a bad input
        raise BadInput(str(path), f"cannot read volume: {err}") from None


def _index_files(folder: Path, gt: GroundTruth) -> dict[int, Path]:
    """The volumes of ``folder`` by sample index (plain names: ``7.tif``, ``sample_7.tiff``)."""
    named = _kind_files(folder, gt)
    if set(named) - {None}:
        misplaced = named.get("recon") or named.get("labels") or {}
        raise BadInput(str(next(iter(misplaced.values()))),
                       "a name saying recon or labels belongs in a flat folder, not in recon/ or labels/")
    return named.get(None, {})


def _kind_files(folder: Path, gt: GroundTruth) -> dict[str | None, dict[int, Path]]:
    """The volumes of ``folder`` by what their names say they hold (None: the name says only the
    index; "recon"/"labels": ``export``'s names, ``sample_000007_recon.mrc``) and sample index."""
    kinds: dict[str | None, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.is_symlink() and not f.exists() and f.suffix.lower() in VOLUME_FILE_SUFFIXES:
            raise BadInput(str(f), f"is a broken symbolic link (to {os.readlink(f)})")
        if not f.is_file() or f.suffix.lower() not in VOLUME_FILE_SUFFIXES:
            continue
        m = _INDEX_RE.match(f.stem) or _KIND_RE.match(f.stem)
        if m is None and _AXIS_RE.match(f.stem):
            raise BadInput(str(f), "is one acquisition axis of export's three-axis output: score takes one "
                                   "(3, Z, Y, X) volume per sample (entry k for the tilt about volume axis k): "
                                   "stack the _axis0, _axis1 and _axis2 files into one, named by the sample")
        if m is None:
            raise BadInput(str(f), "file name must be the sample index, e.g. 7.tif, 000007.mrc or sample_7.tiff "
                                   "(or export's sample_000007_recon.mrc / _labels.mrc)")
        i = int(m.group(1))
        files = kinds.setdefault(m.group(2) if m.re is _KIND_RE else None, {})
        if not 0 <= i < gt.n_samples:
            raise BadInput(str(f), f"sample index {i} is outside the dataset's 0..{gt.n_samples - 1}")
        if i in files:
            raise BadInput(str(f), f"sample {i} is given twice (also {files[i].name})")
        files[i] = f
    return kinds


def _open_folder(path: Path, gt: GroundTruth, only: str = "auto") -> Prediction:
    subdirs = {k: path / k for k in ("recon", "labels") if (path / k).is_dir()}
    groups: dict[str, dict[int, Path]] = {}
    guessed_labels = False
    skipped: list[str] = []  # the kinds export's names say, left out by --only
    if subdirs:
        stray = sorted(f.name for f in path.iterdir() if f.is_file() and f.suffix.lower() in VOLUME_FILE_SUFFIXES)
        if stray:
            raise BadInput(str(path / stray[0]), f"lies beside the {' and '.join(f'{k}/' for k in subdirs)} "
                           "sub-folder(s), which are what is scored: move it into recon/ or labels/")
        for kind, folder in subdirs.items():
            files = _index_files(folder, gt)
            if files:
                groups[kind] = files
    else:
        named = _kind_files(path, gt)
        files = named.get(None, {})
        if set(named) - {None}:  # export's names say what each file holds
            if files:
                raise BadInput(str(path), "mixes files named by index only with files named ..._recon or "
                                          "..._labels; name them one way")
            groups = {k: v for k, v in named.items() if k is not None and only in ("auto", k)}
            skipped = sorted((k for k in named if k is not None and k not in groups), reverse=True)
        if files and only != "auto":  # the user says what the files are (e.g. 8-bit reconstructions)
            groups[only] = files
        elif files:
            integer = {i: _file_is_integer(f) for i, f in files.items()}
            if len(set(integer.values())) > 1:
                ints = sorted(i for i, v in integer.items() if v)
                floats = sorted(i for i, v in integer.items() if not v)
                raise BadInput(str(path), f"mixes integer volumes (samples {ints[:5]}…: segmentations) and "
                                          f"float ones ({floats[:5]}…: reconstructions); put them in recon/ "
                                          "and labels/ sub-folders, or pass --only")
            groups["labels" if next(iter(integer.values())) else "recon"] = files
            guessed_labels = "labels" in groups
    if not groups and skipped:  # as a Zarr without the array: what is there, not "nothing found"
        raise BadInput(str(path), f"holds no {only!r} prediction (found: "
                       f"{', '.join(f'..._{k} files' for k in skipped)})")
    if not groups:
        raise BadInput(str(path), "no TIFF/MRC volumes named by sample index found")
    index_sets = [sorted(g) for g in groups.values()]
    indices = sorted(set().union(*index_sets))
    if len(groups) == 2 and index_sets[0] != index_sets[1]:
        alone = {k: sorted(set(g) - set(groups[next(o for o in groups if o != k)])) for k, g in groups.items()}
        kind, only_in = next((k, v) for k, v in alone.items() if v)
        what = ("recon/ and labels/ must hold the same sample indices" if subdirs else
                "the ..._recon and ..._labels files must cover the same sample indices")
        where = f"is only in {kind}/" if subdirs else f"has only a ..._{kind} file"
        raise BadInput(str(path), f"{what} (sample {only_in[0]} {where})")
    # every prediction is opened before any is scored: a missing reader is said now, not after the others
    for suffix in sorted({f.suffix.lower() for g in groups.values() for f in g.values()}):
        optional(SUFFIX_MODULES[suffix], f"reading {suffix} predictions")
    pred = Prediction(path=path, name=path.resolve().name or str(path.resolve()), indices=indices,
                      kinds=sorted(groups, reverse=True), labels_by_dtype=guessed_labels, files=groups)

    def reader(kind: str, files: dict[int, Path]) -> Callable[[int], np.ndarray]:
        def read(i: int) -> np.ndarray:
            vol = _read_volume(files[i])
            if vol.shape != gt.pred_shape:
                dims = "(3, Z, Y, X)" if gt.n_axes > 1 else "(Z, Y, X)"
                raise BadInput(str(files[i]), f"shape {vol.shape} does not match the dataset's "
                               f"{dims} = {gt.pred_shape}")
            if kind == "labels" and (why := _labels_dtype_problem(vol.dtype)) is not None:
                raise BadInput(str(files[i]), why)
            if kind == "recon" and not _real_number_dtype(vol.dtype):
                raise BadInput(str(files[i]), f"reconstructions must be real numbers (float or integer), "
                               f"got {vol.dtype}")
            return vol

        return read

    for kind, files in groups.items():
        pred.read[kind] = reader(kind, files)
    return pred
