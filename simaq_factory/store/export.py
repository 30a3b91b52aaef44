"""``export``: samples as OME-Zarr (napari and other NGFF readers), TIFF stacks (Fiji) or MRC (IMOD),
and tilt series for other reconstruction software.

One file (or OME-Zarr group) per sample and array, named ``sample_{index:06d}_{array}.{ext}``. Volumes
are (z, y, x) with z the tilt axis; a three-axis dataset's reconstructions (``acquisition.axes: 3``)
are written one per acquisition axis k, ``sample_{index:06d}_recon_axis{k}.{ext}``, each in (z, y, x)
with volume axis k as its tilt axis. The physical voxel size is not part of the simulation (reference
§0.3); it is estimated as ``REFERENCE_VOXEL_NM · 1.2 / scale`` from the scale each sample's phantom
was drawn at (a mean yeast-cell radius of 60 voxels at the reference's 1.2 voxels per unit, i.e.
about 40 nm per voxel at 512³), or given with ``--voxel-size-nm``. Each output is written under a
temporary name (``.NAME.partial``) and renamed, so an interrupted export (Ctrl-C, SIGTERM) leaves no
partial file behind; what a killed one leaves is removed by the next export into the same
destination, whatever its options. One export at a time writes a destination: it holds an exclusive
``flock`` on the destination's journal (below) from its first write to its end, and a second export
into it meanwhile is refused (exit 2, naming the process) before it writes or removes anything. The
lock ends with its process: a killed export does not block the next.

Tilt series (``--arrays sinogram``, MRC or TIFF; the dataset must store ``sinogram`` and
``angles``): ``sample_{index:06d}_sinogram.{ext}`` is the stack of the sample's projections, one
image per angle that was acquired (the NaN-padded rows of ``sinogram`` are left out), each image
(Z, D): rows along the tilt axis (image Y, as IMOD expects), columns the detector, the rotation axis
at column ``(D − 1)/2`` (``reconstruction.center: astra``) or ``D // 2`` (``skimage``). Next to it,
``sample_{index:06d}_sinogram.tlt`` lists the angles in degrees, one per line in stack order (IMOD's
tilt-angle file). The angles are ours (docs/tomo-adapters.md): scikit-image's ``iradon`` and ASTRA's
``parallel`` geometry take them as they are. An MRC tilt series is an image stack (MRC2014
``ispg`` 0) with the pixel size in the header.

Resume: ``dest/.simaq-export.jsonl`` is a journal with one line per file this export renamed into
place, saying what it holds (the source dataset's path and recipe id, the format and the
``--voxel-size-nm`` override; a ``.tlt`` angles file is listed for MRC and TIFF alike) and its
footprint (size; an OME-Zarr folder's total size and file count). The line is appended just before
the rename (which is atomic), and a line unlisting a file before ``--overwrite`` replaces it, so a
file it lists (last line per name) that is in place with its footprint is whole and is what it says;
one that is missing, or cut short or changed in size since, is written again. Appending keeps a large export linear in its files (rewriting one record per file made 2000
files cost 118 s of record writes); a torn last line, from a kill mid-append, is ignored. Running the same export again skips those files and clears
stale ``.partial`` leftovers; any other existing file is refused unless ``--overwrite`` is given.

Everything is checked before the first file is written: the format, every index (in range, and
built: its shard has a provenance record; repeated indices are exported once), every array
(exportable: a volume of this dataset), the metadata files of the arrays read, the checksums of
the shards read, and clashes with existing files. A refused export writes nothing, not even the
destination directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from simaq_factory import __version__
from simaq_factory.errors import BadInput, check_output_dir, optional
from simaq_factory.labels import Label
from simaq_factory.store.dataset import Progress
from simaq_factory.store.inspect import (
    built_records,
    check_shards_done,
    dataset_specs,
    open_checked,
    open_dataset_recipe,
)
from simaq_factory.store.layout import dataset_classes
from simaq_factory.store.outdir import lock_holder
from simaq_factory.store.preview import LABEL_COLOURS

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: exports are not locked against each other
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

REFERENCE_VOXEL_NM = 40.0
#: In the destination: which files an export completed, and from what (resume).
MARKER = ".simaq-export.jsonl"
OLD_MARKER = ".simaq-export.json"  # the whole-record form written before the journal; still read
FORMATS = ("ome-zarr", "tiff", "mrc")
VOLUME_ARRAYS = ("phantom", "labels", "noisy", "recon")
#: Exported as tilt series (an image stack and its ``.tlt`` angles): MRC and TIFF only.
TILT_ARRAYS = ("sinogram",)
TLT = ".tlt"
EXT = {"ome-zarr": ".ome.zarr", "tiff": ".tif", "mrc": ".mrc"}
#: The temporary name of an output while it is written (``.sample_{index:06d}_{array}[_axis{k}]{ext}.partial``).
PARTIAL_NAME = re.compile(r"\.sample_\d{6,}_[a-z]+(_axis\d+)?(\.ome\.zarr|\.tif|\.mrc|\.tlt)\.partial")


def _voxel_nm(record: dict[str, Any]) -> float:
    """The estimated voxel size of a sample, from its provenance record."""
    return REFERENCE_VOXEL_NM * 1.2 / float(record["phantom_spec"]["scale"])


def _write_tiff(path: Path, vol: np.ndarray, vx_nm: float, stack: bool = False) -> None:
    """A volume (z spacing = pixel size) or, with ``stack``, a stack of images (no z spacing)."""
    tifffile = optional("tifffile", "export --format tiff")

    um = vx_nm / 1000.0
    meta: dict[str, Any] = {"unit": "um", "axes": "ZYX"}
    if not stack:
        meta["spacing"] = um
    tifffile.imwrite(path, vol, imagej=True, resolution=(1.0 / um, 1.0 / um), metadata=meta)


def _write_mrc(path: Path, vol: np.ndarray, vx_nm: float, label: str, stack: bool = False) -> None:
    """A volume or, with ``stack``, an image stack (MRC2014 space group 0, as tilt series are).
    ``label`` is the header's one text label (mrcfile's default holds the time of writing: the
    same sample exported twice would differ in bytes)."""
    mrcfile = optional("mrcfile", "export --format mrc")

    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(vol)
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = vx_nm * 10.0  # Å
        mrc.header.label[0] = label.encode("ascii", "replace")[:80]
        mrc.header.nlabl = 1


def _write_tlt(path: Path, angles_deg: np.ndarray) -> None:
    """IMOD's tilt-angle file: one angle in degrees per line, in stack order."""
    path.write_text("".join(f"{float(a):.6f}\n" for a in angles_deg))


def _levels(vol: np.ndarray, is_label: bool, min_size: int = 32) -> list[np.ndarray]:
    levels = [vol]
    while min(levels[-1].shape) >= 2 * min_size and len(levels) < 5:
        v = levels[-1]
        z, y, x = (s // 2 * 2 for s in v.shape)
        v = v[:z, :y, :x]
        if is_label:
            levels.append(np.ascontiguousarray(v[::2, ::2, ::2]))
        else:
            levels.append(v.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5)).astype(v.dtype))
    return levels


def _multiscales(name: str, n_levels: int, vx_nm: float, is_label: bool = False) -> dict[str, Any]:
    """NGFF 0.4 multiscales. Level i's voxel j covers fine voxels j·2^i … j·2^i + 2^i − 1: an image
    level is their mean, centred (2^i − 1)/2 fine voxels further on (a translation); a label level
    takes the first of them (no translation), so every level sits where its voxels came from."""
    def shift(i: int) -> float:
        return 0.0 if is_label else vx_nm * (2**i - 1) / 2.0

    return {
        "version": "0.4",
        "name": name,
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in ("z", "y", "x")],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [vx_nm * 2**i] * 3},
            {"type": "translation", "translation": [shift(i)] * 3}]} for i in range(n_levels)],
        "type": "nearest" if is_label else "mean",
        "metadata": {  # how the levels were made (NGFF: SHOULD be given with "type")
            "description": ("level i is level 0 sampled at every 2^i-th voxel along z, y and x (the "
                            "first voxel of each 2^i block; no values mixed)" if is_label else
                            "level i+1 is the mean of each 2x2x2 block of level i (odd edges dropped)"),
            "method": "numpy slicing [::2, ::2, ::2]" if is_label else "numpy.ndarray.mean over 2x2x2 blocks",
            "version": np.__version__,
        },
    }


def _label_rgba(value: int) -> list[int]:
    """A label value's NGFF colour (0–255 RGBA): the preview's overlay colour, opaque; the background
    transparent, so a viewer shows the image under it."""
    if value == Label.BACKGROUND:
        return [0, 0, 0, 0]
    return [int(255 * c) for c in LABEL_COLOURS[value]] + [255]


def _write_ngff_image(group: Any, name: str, vol: np.ndarray, vx_nm: float, is_label: bool,
                      classes: dict[int, str], nested: bool = False) -> None:
    """One multiscale image; a label image gets ``image-label`` colours and class names (the dataset's
    ``classes``, id → name), and ``source`` (its parent image, two levels up) only when it is
    ``nested`` under an image's ``labels/`` group. Colours and names list the same label values, the
    background (0) transparent: NGFF 0.4 has both describe the image's label values, and validators
    (ome-zarr-models) reject a label image whose two lists differ."""
    levels = _levels(vol, is_label)
    for i, lv in enumerate(levels):
        chunks = tuple(min(s, 64) for s in lv.shape)
        group.create_array(str(i), data=lv, chunks=chunks,
                           chunk_key_encoding={"name": "v2", "separator": "/"})
    attrs: dict[str, Any] = {"multiscales": [_multiscales(name, len(levels), vx_nm, is_label)]}
    if is_label:
        attrs["image-label"] = {
            "version": "0.4",
            "colors": [{"label-value": v, "rgba": _label_rgba(v)} for v in classes],
            "properties": [{"label-value": v, "class": name} for v, name in classes.items()],
        }
        if nested:
            attrs["image-label"]["source"] = {"image": "../../"}
    group.attrs.update(attrs)


def _write_ome_zarr(path: Path, name: str, vol: np.ndarray, vx_nm: float, labels: np.ndarray | None,
                    classes: dict[int, str]) -> None:
    """OME-NGFF 0.4 (Zarr v2), the version most readers open; labels as an NGFF label image."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    _write_ngff_image(root, name, vol, vx_nm, is_label=name.endswith("labels"), classes=classes)
    if labels is not None:
        lab_root = root.create_group("labels")
        lab_root.attrs["labels"] = ["labels"]
        _write_ngff_image(lab_root.create_group("labels"), "labels", labels, vx_nm, is_label=True,
                          classes=classes, nested=True)


def _read_marker(dest: Path) -> dict[str, Any]:
    """The files previous exports completed in ``dest`` (name → what it holds): the journal's last
    line per name wins; unreadable or torn lines are skipped."""
    files: dict[str, Any] = {}
    try:  # an export interrupted before the journal existed
        old = json.loads((dest / OLD_MARKER).read_text())["files"]
        files.update(old if isinstance(old, dict) else {})
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        lines = _journal_text(dest).splitlines()
    except OSError:
        return files
    for line in lines:
        try:
            entry = json.loads(line)
            name = entry["file"]
        except (ValueError, KeyError, TypeError):
            continue
        if entry.get("holds") is None:
            files.pop(name, None)
        else:
            files[name] = entry["holds"]
    return files


#: what a journal entry records of a file's (or an OME-Zarr folder's) contents besides its export key
FOOTPRINT = ("bytes", "files")


def _footprint(path: Path) -> dict[str, int]:
    """A file's size (``bytes``); a folder's total size and number of files (an OME-Zarr group)."""
    if not path.is_dir():
        return {"bytes": path.stat().st_size}
    sizes = [f.stat().st_size for f in path.rglob("*") if f.is_file()]
    return {"bytes": sum(sizes), "files": len(sizes)}


def _same_export(holds: Any, key: dict[str, Any]) -> bool:
    """Whether a journal entry (``holds``, with the file's :func:`_footprint` since it was recorded)
    lists a file of the export ``key`` describes."""
    return isinstance(holds, dict) and {k: v for k, v in holds.items() if k not in FOOTPRINT} == key


def _same_size(holds: dict[str, Any], target: Path) -> bool:
    """Whether ``target`` still has the footprint its journal entry ``holds`` recorded (entries of
    older versions recorded none for folders: taken as whole)."""
    recorded = {k: holds[k] for k in FOOTPRINT if k in holds}
    if not recorded:
        return True
    try:
        return _footprint(target) == recorded
    except OSError:
        return False


#: the journals this process holds locked (destination → descriptor, :func:`_hold_destination`): read
#: and appended through that descriptor only, since where flock is emulated by POSIX locks (NFS)
#: closing any descriptor of the file drops the lock
_HELD: dict[Path, int] = {}


def _journal_text(dest: Path) -> str:
    """The journal of ``dest`` as text (OSError when it cannot be read)."""
    fd = _HELD.get(dest)
    if fd is None:
        return (dest / MARKER).read_text(encoding="utf-8", errors="replace")
    data = bytearray()
    while chunk := os.pread(fd, 1 << 20, len(data)):
        data += chunk
    return data.decode("utf-8", errors="replace")


def _journal(dest: Path, name: str, holds: dict[str, Any] | None) -> None:
    """Append that ``name`` now holds ``holds`` (None: unlisted), in one write, synced to disk."""
    line = json.dumps({"file": name, "holds": holds}, sort_keys=True) + "\n"
    held = _HELD.get(dest)
    fd = held if held is not None else os.open(dest / MARKER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        if held is None:
            os.close(fd)


@contextmanager
def _hold_destination(dest: Path) -> Iterator[None]:
    """Hold ``dest`` for this export while the block runs: an exclusive ``flock`` on its journal.
    A second export into ``dest`` meanwhile is refused (:class:`BadInput`, exit 2) before it writes
    or removes anything: two exports at once removed each other's temporary files as leftovers (an
    OME-Zarr sample renamed into place without its image, listed as complete) and wrote the same
    temporary names. The lock dies with its process, so a killed export does not block the next."""
    journal = dest / MARKER
    try:
        fd = os.open(journal, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as err:
        raise BadInput(str(journal), f"cannot open the export journal: {err.strerror}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = lock_holder(journal)
                who = f" (process {pid})" if pid is not None else ""
                raise BadInput(str(dest), f"another export{who} is writing to it; wait for it to end or "
                                          "export to another destination") from None
            except OSError as err:  # a filesystem without locks (ENOLCK, EOPNOTSUPP): go on unguarded
                log.warning("%s: cannot lock (%s); a second export into it would not be detected",
                            dest, err.strerror)
        _HELD[dest] = fd
        try:
            yield
        finally:
            del _HELD[dest]
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a file or folder; never raises (a cleanup must not replace the error it cleans up after:
    an interrupt while zarr writes may leave its own temporary files coming and going)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
    except OSError as err:
        log.debug("could not remove %s: %s", path, err)


def export_dataset(
    out: Path,
    dest: Path,
    *,
    fmt: str,
    indices: list[int] | None = None,
    arrays: list[str] | None = None,
    voxel_nm: float | None = None,
    overwrite: bool = False,
    skipped: list[Path] | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Export samples of ``out`` into directory ``dest``; returns the written paths. Files a previous,
    interrupted run of the same export completed are kept and appended to ``skipped`` (see the module
    docstring); with ``overwrite`` every target is written again. ``progress`` is told the files
    done (written or kept) of all."""
    if fmt not in FORMATS:
        raise BadInput("--format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt in ("tiff", "mrc"):  # before anything is read or written
        optional("tifffile" if fmt == "tiff" else "mrcfile", f"export --format {fmt}")
    recipe, rid = open_dataset_recipe(out)
    specs = dataset_specs(recipe)
    n = recipe.dataset.n_samples
    explicit = bool(indices)
    indices = list(dict.fromkeys(indices)) if indices else list(range(n))
    exportable = [a for a in VOLUME_ARRAYS if a in specs]
    if fmt != "ome-zarr":
        exportable += [a for a in TILT_ARRAYS if a in specs and "angles" in specs]
    arrays = list(dict.fromkeys(arrays)) if arrays else [a for a in ("recon", "labels", "phantom")
                                                         if a in specs]
    for a in arrays:
        if a in TILT_ARRAYS and a in specs and "angles" not in specs:
            raise BadInput("--arrays", f"{a!r}: a tilt series is exported with its angles, and this dataset "
                           "stores none (dataset.outputs.angles: false)")
        if a in TILT_ARRAYS and a in specs and fmt == "ome-zarr":
            raise BadInput("--arrays", f"{a!r} is a tilt series, not a volume: export it with --format mrc "
                           "or tiff (an image stack and its .tlt angles)")
        if a in specs and a not in exportable:
            raise BadInput("--arrays", f"{a!r} is not exportable (exportable: {', '.join(exportable)})")
        if a not in exportable:
            raise BadInput("--arrays", f"{a!r} is not in this dataset (exportable: {', '.join(exportable)})")
    if arrays == []:
        raise BadInput("--arrays", "empty")
    # a directory, writable (or creatable), in no dataset, before anything is read; creates nothing
    check_output_dir(dest)
    # every index in range and built, before anything is read or written
    try:
        records = built_records(out, recipe, indices)
    except BadInput as err:
        if explicit:
            raise
        raise BadInput(str(out), f"not completely built, {err.message}; finish the build or export "
                       "built samples with --index") from None
    needed = arrays + (["labels"] if fmt == "ome-zarr" and "labels" not in arrays else [])
    needed += ["angles"] if any(a in TILT_ARRAYS for a in arrays) else []
    g = open_checked(out, specs, needed)
    shards = sorted({i // recipe.dataset.samples_per_shard for i in indices})
    check_shards_done(out, recipe, rid, specs, shards, "nothing exported")
    targets: list[tuple[int, str, int | None, Path]] = []
    for i in indices:
        for a in arrays:
            # (N, axis, Z, Y, X) or (N, axis, A, Z, D): one file per acquisition axis
            for k in range(g[a].shape[1]) if g[a].ndim == 5 else [None]:
                stem = f"sample_{i:06d}_{a}" + ("" if k is None else f"_axis{k}")
                if a in TILT_ARRAYS:  # its angles, a file of their own (journalled like the others)
                    targets.append((i, a, k, dest / f"{stem}{TLT}"))
                targets.append((i, a, k, dest / f"{stem}{EXT[fmt]}"))
    # what each target holds: a file the marker lists with this key is a completed one (resume)
    key = {"dataset": str(out.resolve()), "recipe_id": rid, "format": fmt, "voxel_size_nm": voxel_nm}
    # a tilt series' angles file is the same whatever the format and voxel size: one for MRC and TIFF
    tlt_key = {"dataset": key["dataset"], "recipe_id": rid, "format": TLT}

    def key_of(target: Path) -> dict[str, Any]:
        return tlt_key if target.suffix == TLT else key

    journal = dest / MARKER
    if journal.exists() and not journal.is_file():  # a folder (or a device) where the journal belongs
        raise BadInput(str(journal), "is not a file: this is where export keeps its journal of finished "
                       "files; move it away or export to another destination")

    def survey() -> tuple[dict[str, Any], set[Path]]:
        """What the journal lists (name → holds) and the targets complete; BadInput on a clash."""
        done = _read_marker(dest) if dest.is_dir() else {}
        # ours: listed by an export of the same data; complete unless its size changed since (a file
        # cut short or replaced after the export is written again, without --overwrite: it is ours)
        ours = {t for *_, t in targets if t.exists() and _same_export(done.get(t.name), key_of(t))}
        complete = {t for t in ours if not overwrite and _same_size(done[t.name], t)}
        clash = [t for *_, t in targets if t.exists() and t not in ours]
        if clash and not overwrite:
            raise BadInput(str(clash[0]), "exists; use --overwrite or another destination")
        return done, complete

    survey()  # a refused export writes nothing
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(str(dest), f"cannot create the export destination: {err.strerror}") from None
    with _hold_destination(dest):
        # again under the lock: an export that held ``dest`` until now may have written targets
        done, complete = survey()
        # leftovers of an interrupted or killed export: this one's and those of any other export into
        # ``dest`` (other --index, --arrays or --format), which no later run would clear otherwise;
        # only under the lock (was: also while another export wrote them, which lost its data)
        for *_, target in targets:
            _remove(target.with_name(f".{target.name}.partial"))
        for entry in dest.iterdir():
            if PARTIAL_NAME.fullmatch(entry.name):
                _remove(entry)
        written = []
        classes = dataset_classes(recipe)  # OME-Zarr label images name them
        for n_done, (i, a, axis, target) in enumerate(targets):
            if progress is not None:
                progress("exporting files", n_done, len(targets))
            if target in complete:
                if skipped is not None:
                    skipped.append(target)
                continue
            vx = voxel_nm or _voxel_nm(records[i])
            tilt = a in TILT_ARRAYS
            if tilt:
                angles = g["angles"][i] if axis is None else g["angles"][i, axis]
                acquired = np.isfinite(angles)  # the rows past the sample's angle count are padding
            if tilt and target.suffix == TLT:
                vol = angles[acquired]
            else:
                vol = g[a][i] if axis is None else g[a][i, axis]
                if tilt:
                    vol = vol[acquired]
                if vol.dtype == np.float16:
                    vol = vol.astype(np.float32)
                if fmt == "mrc" and vol.dtype == np.uint8:
                    vol = vol.astype(np.int16)  # MRC has no unsigned 8-bit mode; labels fit int16
            tmp = target.with_name(f".{target.name}.partial")
            try:
                if target.suffix == TLT:
                    _write_tlt(tmp, vol)
                elif fmt == "tiff":
                    _write_tiff(tmp, vol, vx, stack=tilt)
                elif fmt == "mrc":
                    _write_mrc(tmp, vol, vx, f"simaq-factory {__version__}: sample {i} {a}"
                               + ("" if axis is None else f" axis {axis}") + f", recipe {rid[:16]}",
                               stack=tilt)
                else:
                    with_labels = g["labels"][i] if a != "labels" and "labels" in g else None
                    _write_ome_zarr(tmp, a if axis is None else f"{a}_axis{axis}", vol, vx, with_labels, classes)
                if target.exists() or target.is_symlink():  # --overwrite: unlist it first, then replace it
                    if target.name in done:
                        del done[target.name]
                        _journal(dest, target.name, None)
                    _remove(target)
                # listed once whole, just before its rename: a kill between the two leaves a listed name
                # that is missing (written again) or whole in place (kept), never an unlisted file of ours
                holds = {**key_of(target), **_footprint(tmp)}
                _journal(dest, target.name, holds)
                os.replace(tmp, target)
            except BaseException:
                # up to the rename (was: up to the end of the write only, so Ctrl-C in the journal
                # append or the footprint left the whole temporary file behind); best effort, the
                # next export into ``dest`` clears what is left
                _remove(tmp)
                raise
            done[target.name] = holds
            written.append(target)
        if progress is not None:
            progress("exporting files", len(targets), len(targets))
        return written
