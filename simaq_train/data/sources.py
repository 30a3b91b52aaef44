"""Volume sources the stream draws windows from.

A source is a list of *volumes* — (normalised reconstruction, labels) pairs, both (Z, H, W) with Z
the tilt axis of that reconstruction — plus a per-slice index saying which slices carry labels and
which carry foreground.

* :class:`FactorySource` reads a simaq-factory dataset directory (design §5) through its on-disk
  format only: ``dataset.zarr`` arrays ``recon`` (N, Z, Y, X), or (N, A, Z, Y, X) when the card's
  ``tilt_axes`` lists A acquisition axes, and ``labels`` (N, Z, Y, X). ``recon[:, a]`` is stored in
  the canonical (Z, Y, X) orientation; its tilt axis is volume axis ``tilt_axes[a]``. The source
  views acquisition ``a`` in its own frame (docs/acquisition-axes.md): both ``recon[i, a]`` and
  ``labels[i]`` are transposed by ``axis_frames[a]["permutation"]`` (tilt axis first, beam at 0°
  along the rows, detector along the columns — the orientation of a one-axis acquisition, so the
  missing wedge lies the same way in every window). Cards without ``tilt_axes`` mean ``[0]``;
  cards without ``axis_frames`` mean the format's cyclic frames ``(k, k+1, k+2) mod 3``.
* :class:`RealSource` reads real tomograms with sparse annotations (reference §4.5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simaq_factory.errors import BadInput, DamagedData
from simaq_train.data.normalize import fov_mask, normalize_finite, quantile_normalize
from simaq_train.data.volumes import (
    frame_permutation,
    is_slicer_seg,
    place_into,
    read_volume_meta,
    slicer_offset,
    slicer_to_classes,
)

log = logging.getLogger(__name__)

IGNORE = 255
SUPPORTED_SCHEMA = (1,)
DEFAULT_CLASS_NAMES = ("background", "cell", "vacuole", "lipid_droplet")
_warned_unfrozen: set[str] = set()  # datasets already warned about in this process


class UnreadableData(DamagedData):
    """A stored chunk of a dataset cannot be read or decoded (a damaged store, not bad input): the
    message names the dataset, array and sample, and the check to run. Exit code 1."""


@dataclass(frozen=True)
class SliceIndex:
    """Per-slice flags of one volume: ``labelled[z]`` any annotated pixel, ``foreground[z]`` any
    pixel of a class other than background."""

    labelled: np.ndarray
    foreground: np.ndarray


def slice_index(labels: np.ndarray) -> SliceIndex:
    """Flags of the Z slices of a (Z, Y, X) uint8 label volume."""
    labelled = (labels != IGNORE).any(axis=(1, 2))
    foreground = ((labels != IGNORE) & (labels != 0)).any(axis=(1, 2))
    return SliceIndex(labelled, foreground)


def check_labels(labels: np.ndarray, n_classes: int, where: str) -> None:
    bad = (labels != IGNORE) & (labels >= n_classes)
    if bad.any():
        raise BadInput(where, f"label value {int(labels[bad].max())} >= model.out_channels={n_classes}")


def open_dataset(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Open ``PATH/dataset.zarr`` read-only and check its card; returns (group, card)."""
    import zarr

    root = Path(path)
    gpath = root / "dataset.zarr"
    if not gpath.is_dir():
        raise BadInput(str(root), "not a simaq-factory dataset (no dataset.zarr)")
    try:
        group = zarr.open_group(gpath, mode="r")
        card = dict(group.attrs)
    except Exception as err:  # noqa: BLE001
        raise BadInput(str(gpath), f"cannot open ({type(err).__name__}: {err})") from None
    if card.get("schema_version") not in SUPPORTED_SCHEMA:
        raise BadInput(str(gpath), f"schema_version {card.get('schema_version')!r} is not supported "
                                   f"(this simaq-train reads {list(SUPPORTED_SCHEMA)})")
    for name in ("recon", "labels"):
        if name not in group:
            raise BadInput(str(gpath), f"missing array {name!r}")
    status = card.get("status")
    if status in ("building", "incomplete"):
        raise BadInput(str(root), f"dataset status is {status!r}: finish the build first "
                                  "(simaq-factory build … then simaq-factory freeze)")
    _check_shards(root, card)
    if status != "frozen" and str(root.resolve()) not in _warned_unfrozen:
        _warned_unfrozen.add(str(root.resolve()))
        log.warning("%s: dataset is not frozen (status %r); freeze it to pin its contents", root, status)
    return group, card


def _check_shards(root: Path, card: dict[str, Any]) -> None:
    """BadInput unless every shard the card implies (``n_samples``, ``samples_per_shard``) has its
    provenance record, which a build writes last for each shard: a card that says complete over a
    shard without one describes an incomplete (or damaged) dataset. Cards without the two fields
    are not checked."""
    from simaq_factory.store.layout import provenance_path, samples_text, shard_ranges

    n, per = card.get("n_samples"), card.get("samples_per_shard")
    if not (isinstance(n, int) and isinstance(per, int) and n > 0 and per > 0):
        return
    missing = [(k, samples) for k, samples in enumerate(shard_ranges(n, per))
               if not provenance_path(root, k).is_file()]
    if missing:
        first, samples = missing[0]
        raise BadInput(str(root), f"dataset card says {card.get('status')!r} but {len(missing)} shard(s) have no "
                                  f"provenance record (first: {provenance_path(root, first).relative_to(root)}, "
                                  f"{samples_text(samples)}): the dataset is incomplete; "
                                  f"`simaq-factory status {root}` tells what is missing")


def dataset_hash(path: str | Path) -> str:
    """sha256 of ``manifest.jsonl`` when frozen, else :func:`dataset_meta_hash`."""
    manifest = Path(path) / "manifest.jsonl"
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    return dataset_meta_hash(path)


def dataset_meta_hash(path: str | Path) -> str:
    """sha256 of the recipe id and array metadata (what :func:`dataset_hash` is before freezing)."""
    group, card = open_dataset(path)
    meta = {
        "recipe_id": card.get("recipe_id"),
        "arrays": {k: [list(group[k].shape), str(group[k].dtype)] for k in sorted(group.array_keys())},
    }
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def class_names(card: dict[str, Any], n_classes: int) -> list[str]:
    """Names of class ids 0 … n_classes − 1 from the card's label map."""
    lm = card.get("label_map", {})
    return [str(lm.get(str(c), DEFAULT_CLASS_NAMES[c] if c < len(DEFAULT_CLASS_NAMES) else f"class{c}"))
            for c in range(n_classes)]


def infer_n_classes(path: str | Path) -> int:
    """Number of classes of a dataset: 1 + the largest class id of its label map, leaving out the
    nucleus class when the resolved recipe says ``phantom.nucleus.enabled: false``."""
    root = Path(path)
    _, card = open_dataset(root)
    ignore = int(card.get("ignore_label", IGNORE))
    ids = {int(k): str(v) for k, v in card.get("label_map", {}).items() if int(k) != ignore}
    if not ids:
        return len(DEFAULT_CLASS_NAMES)
    try:
        resolved = json.loads((root / "recipe.resolved.json").read_text())
        nucleus_on = bool(resolved["recipe"]["phantom"]["nucleus"]["enabled"])
    except (OSError, ValueError, KeyError, TypeError):
        nucleus_on = True
    if not nucleus_on:
        ids = {k: v for k, v in ids.items() if v != "nucleus"}
    return max(ids) + 1


def tilt_axes_of(card: dict[str, Any], recon_ndim: int, where: str) -> list[int]:
    """The card's ``tilt_axes`` (default ``[0]``), checked against the rank of ``recon``."""
    axes = card.get("tilt_axes", [0])
    if (not isinstance(axes, list) or not axes or any(a not in (0, 1, 2) for a in axes)
            or len(set(axes)) != len(axes)):
        raise BadInput(where, f"dataset card: tilt_axes {axes!r} is not a list of distinct axes 0..2")
    if recon_ndim == 4 and len(axes) != 1:
        raise BadInput(where, f"recon is 4D but the card lists tilt_axes {axes}")
    return [int(a) for a in axes]


def frame_permutations(card: dict[str, Any], tilt_axes: list[int], where: str) -> list[tuple[int, int, int]]:
    """For each acquisition ``a``, the permutation that takes a (Z, Y, X) volume into its frame
    (``axis_frames[a]["permutation"]``; tilt axis ``tilt_axes[a]`` first), checked."""
    frames = card.get("axis_frames")
    if frames is None:
        return [(k, (k + 1) % 3, (k + 2) % 3) for k in tilt_axes]
    if not isinstance(frames, list) or len(frames) != len(tilt_axes):
        raise BadInput(where, f"dataset card: axis_frames must list one frame per tilt axis {tilt_axes}")
    perms = []
    for a, (k, frame) in enumerate(zip(tilt_axes, frames)):
        perm = frame.get("permutation") if isinstance(frame, dict) else None
        if (not isinstance(perm, list) or sorted(perm) != [0, 1, 2] or perm[0] != k):
            raise BadInput(where, f"dataset card: axis_frames[{a}].permutation {perm!r} is not a "
                                  f"permutation of (0, 1, 2) starting with tilt axis {k}")
        perms.append((int(perm[0]), int(perm[1]), int(perm[2])))
    return perms


#: below this many voxels per sample a label volume is too little work to index on threads
#: (measured on 2 vCPUs: 400 × 16³ 0.65 → 0.93 s with two threads; 32 × 128³ 0.72 → 0.31 s)
INDEX_THREADS_MIN_VOXELS = 64**3


class FactorySource:
    """Volumes of a simaq-factory dataset: one per (sample, acquisition axis)."""

    def __init__(self, path: str | Path, *, n_classes: int, fov_margin: float = 5.0,
                 axes: str = "all", max_samples: int = 0) -> None:
        """``axes``: ``"all"`` (every acquisition axis of a three-axis dataset) or ``"first"``
        (acquisition 0); anything else is a ``BadInput`` naming ``axes`` (it read as ``"first"``)."""
        if axes not in ("all", "first"):
            raise BadInput("axes", f"must be 'all' or 'first', got {axes!r}")
        self.path = Path(path)
        group, card = open_dataset(self.path)
        self.card = card
        recon, labels = group["recon"], group["labels"]
        where = str(self.path / "dataset.zarr")
        self.tilt_axes = tilt_axes_of(card, recon.ndim, where)
        self.perms = frame_permutations(card, self.tilt_axes, where)
        self.multi = recon.ndim == 5
        if labels.ndim != 4 or recon.ndim not in (4, 5):
            raise BadInput(where, f"unexpected recon/labels ranks {recon.ndim}/{labels.ndim}")
        expect = ((labels.shape[0], len(self.tilt_axes)) + labels.shape[1:] if self.multi else labels.shape)
        if tuple(recon.shape) != tuple(expect):
            raise BadInput(where, f"recon shape {recon.shape} does not match labels {labels.shape} "
                                  f"and tilt_axes {self.tilt_axes}")
        if labels.dtype != np.uint8:
            raise BadInput(where, f"labels dtype {labels.dtype}, expected uint8")
        self.n_samples = labels.shape[0] if max_samples <= 0 else min(max_samples, labels.shape[0])
        self.acqs = list(range(len(self.tilt_axes))) if axes == "all" else [0]
        self.n_classes = n_classes
        self.fov_margin = fov_margin
        self.shape = tuple(int(s) for s in labels.shape[1:])
        self.name = str(self.path)
        self._arrays: dict[str, Any] = {}  # opened once per process (see _array)
        self._checked: set[int] = set()  # shards whose labels and recon files matched their checksums
        self._ndim = {"recon": recon.ndim, "labels": labels.ndim}
        self._check_shards()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to DataLoader workers) without the opened arrays; each process opens its own."""
        return {**self.__dict__, "_arrays": {}}

    def __len__(self) -> int:
        return self.n_samples * len(self.acqs)

    def locate(self, v: int) -> tuple[int, int]:
        """Volume id → (sample index, acquisition index into ``tilt_axes``)."""
        return v // len(self.acqs), self.acqs[v % len(self.acqs)]

    def inplane_shapes(self) -> set[tuple[int, int]]:
        """In-plane (H, W) of the volumes in the frame of each acquisition."""
        return {(self.shape[self.perms[a][1]], self.shape[self.perms[a][2]]) for a in self.acqs}

    def _array(self, name: str) -> Any:
        """``labels`` or ``recon``, opened on first use in this process (a metadata read per volume
        loaded, three of them, was what opening the group for every load cost)."""
        if name not in self._arrays:
            import zarr

            self._arrays[name] = zarr.open_array(self.path / "dataset.zarr" / name, mode="r")
        return self._arrays[name]

    def _check_shards(self) -> None:
        """Every shard file this source reads (labels and recon of its samples), hashed once, here,
        on a few threads: the set of checked shards goes with the source to loader workers, which
        would otherwise hash every shard again each epoch. Files unchanged since simaq-factory last
        hashed them are not hashed again (its :class:`~simaq_factory.store.dataset.DigestCache`)."""
        from simaq_factory.store.dataset import DigestCache, hash_threads, map_in_order

        per = self.card.get("samples_per_shard")
        if isinstance(per, int) and per > 0:
            digests = DigestCache(self.path)
            try:
                map_in_order(lambda s: self._check_shard(s, digests), list(range(0, self.n_samples, per)),
                             hash_threads())
            finally:
                digests.save()

    def _check_shard(self, s: int, digests: Any = None) -> None:
        """The labels and recon files of the shard holding sample ``s`` against the checksums its
        provenance record holds, once per shard (done for all by :meth:`_check_shards`): a damaged
        chunk that still decodes was read as data (one voxel -1e38 went into the network).
        :class:`UnreadableData` when one differs; records without checksums (datasets written by
        other tools) are not checked."""
        per = self.card.get("samples_per_shard")
        if not isinstance(per, int) or per <= 0 or s // per in self._checked:
            return
        from simaq_factory.store.dataset import load_provenance, sha256_file
        from simaq_factory.store.layout import shard_key

        k = s // per
        record, _ = load_provenance(self.path, k)  # an unreadable record: open_dataset named missing ones
        checksums = (record or {}).get("checksums")
        for name, ndim in self._ndim.items():
            if not isinstance(checksums, dict) or name not in checksums:
                continue
            path = self.path / "dataset.zarr" / name / shard_key(k, ndim)
            if (digests.sha256(path) if digests is not None else sha256_file(path)) != checksums[name]:
                raise UnreadableData(f"{path} (shard {k}, sample {s}) does not match the checksum in its provenance "
                                     f"record: the dataset is damaged; `simaq-factory verify {self.path}` lists "
                                     "what else is")
        self._checked.add(k)

    def _read(self, name: str, s: int, a: int | None = None) -> np.ndarray:
        """Sample ``s`` (acquisition ``a`` of a 5D ``recon``) of array ``name``; a chunk that cannot
        be read or decoded, or a shard file that does not match its checksum, is
        :class:`UnreadableData` naming the dataset, array and sample."""
        self._check_shard(s)
        try:
            arr = self._array(name)
            return np.asarray(arr[s] if a is None else arr[s, a])
        except Exception as err:  # noqa: BLE001 - codec, I/O and metadata errors alike
            what = " ".join(f"{type(err).__name__}: {err}".split())
            raise UnreadableData(
                f"{self.path / 'dataset.zarr' / name}, sample {s}: cannot be read ({what[:160]}); the dataset "
                f"is damaged: run `simaq-factory verify {self.path}`") from err

    def _mask_fov(self, labels: np.ndarray) -> np.ndarray:
        """Labels outside the field-of-view cylinder (where the input is 0) become IGNORE."""
        return np.where(fov_mask(labels.shape[1:], self.fov_margin)[None], labels, IGNORE).astype(np.uint8)

    def to_frame(self, vol: np.ndarray, a: int) -> np.ndarray:
        """A (Z, Y, X) volume (labels, or ``recon[i, a]``) in the frame of acquisition ``a``."""
        return np.ascontiguousarray(np.transpose(vol, self.perms[a]))

    def index(self) -> list[SliceIndex]:
        """Slice flags of every volume (reads every label volume once, a few samples at a time on
        threads: decoding and the numpy reductions release the GIL)."""
        from simaq_factory.store.dataset import map_in_order

        def sample(s: int) -> list[SliceIndex]:
            lab = self._read("labels", s)
            check_labels(lab, self.n_classes, f"{self.path}: labels[{s}]")
            return [slice_index(self._mask_fov(self.to_frame(lab, a))) for a in self.acqs]

        big = int(np.prod(self.shape)) >= INDEX_THREADS_MIN_VOXELS
        threads = min(4, os.cpu_count() or 1) if big else 1
        return [flags for per_sample in map_in_order(sample, range(self.n_samples), threads) for flags in per_sample]

    def load_raw(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        """Volume ``v`` as stored, in the frame of its acquisition: (raw recon, labels uint8 with
        255 outside the field of view)."""
        s, a = self.locate(v)
        lab = self._read("labels", s)
        check_labels(lab, self.n_classes, f"{self.path}: labels[{s}]")
        lab = self.to_frame(lab, a)
        rec = self.to_frame(self._read("recon", s, a if self.multi else None), a)
        return rec, self._mask_fov(lab)

    def load(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        """Volume ``v``: (normalised recon float32 (Z', H, W), labels uint8 (Z', H, W)) in the frame
        of its acquisition (tilt axis first); labels outside the field of view are 255."""
        rec, lab = self.load_raw(v)
        return quantile_normalize(rec, self.fov_margin), lab


# --- real tomograms ----------------------------------------------------------------------------

TOMO_SUFFIXES = (".tif", ".tiff", ".mrc", ".rec", ".map", ".nrrd", ".nhdr")


def find_pairs(folder: Path) -> list[tuple[str, str]]:
    """``NAME.{tif,tiff,mrc,rec,map,nrrd,nhdr}`` with a sibling ``NAME.seg.nrrd`` (3D Slicer) or
    ``NAME.labels.{tif,tiff,mrc,nrrd}``; tomograms without one are skipped, with a warning naming
    them (a misspelt annotation name would otherwise drop a tomogram from training unseen)."""
    pairs, skipped = [], []
    for img in sorted(folder.iterdir()):
        name = img.name.lower()
        if ".labels." in name or name.endswith(".seg.nrrd") or not name.endswith(TOMO_SUFFIXES):
            continue
        stem = img.name[: -len(img.suffix)]
        cands = [folder / f"{stem}.seg.nrrd"] + [
            folder / f"{stem}.labels{ext}" for ext in (".tif", ".tiff", ".mrc", ".nrrd")
        ]
        seg = next((c for c in cands if c.exists()), None)
        if seg is None:
            skipped.append(img.name)
            continue
        pairs.append((str(img), str(seg)))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("data.real.dirs: %s: %d tomogram(s) without an annotation (NAME.seg.nrrd or "
                    "NAME.labels.tif/.tiff/.mrc/.nrrd beside them) skipped: %s", folder, len(skipped), shown)
    return pairs


def fit_inplane(arr: np.ndarray, shape_yx: tuple[int, int], fill: float) -> np.ndarray:
    """Centre-crop or pad (with ``fill``) the last two axes of ``arr`` to ``shape_yx``."""
    out = np.full(arr.shape[:-2] + tuple(shape_yx), fill, dtype=arr.dtype)
    src, dst = [], []
    for n_in, n_out in zip(arr.shape[-2:], shape_yx):
        if n_in >= n_out:
            o = (n_in - n_out) // 2
            src.append(slice(o, o + n_out))
            dst.append(slice(0, n_out))
        else:
            o = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(o, o + n_in))
    out[(...,) + tuple(dst)] = arr[(...,) + tuple(src)]
    return out


def read_annotation(path: str, shape: tuple[int, ...], class_names: list[str],
                    slicer_convention: bool = True,
                    voxel_size: tuple[float, float, float] | None = None) -> np.ndarray:
    """A sparse annotation volume as uint8 class ids with 255 = unlabelled.

    ``.seg.nrrd`` (3D Slicer): placed at its recorded extent offset, see :func:`slicer_to_classes`
    (with ``slicer_convention=False`` the values are taken as they are, like other formats); labels
    its extent puts outside the tomogram are refused. Another file whose voxel size differs from
    ``voxel_size`` (the tomogram's) by over 1 % is refused, when both record one (1 Å: unknown). Other files: values are class ids, 255
    unlabelled; signed 8-bit data (MRC mode 0) is reinterpreted as unsigned.
    """
    vol = read_volume_meta(path)
    # an MRC voxel size of 1 Å is IMOD's and EMAN2's "unknown"; Slicer's .seg.nrrd spacings are in
    # whatever unit Slicer took the tomogram's for (its placement is checked by its extent instead)
    def recorded(size: tuple[float, float, float] | None) -> bool:
        return size is not None and not np.allclose(size, 1.0)

    if (recorded(vol.voxel_size) and recorded(voxel_size) and not is_slicer_seg(path)
            and not np.allclose(vol.voxel_size, voxel_size, rtol=0.01)):
        show = lambda v: " × ".join(f"{x:g}" for x in v)  # noqa: E731
        raise BadInput(path, f"voxel size {show(vol.voxel_size)} Å (z, y, x) differs from its tomogram's "
                             f"{show(voxel_size)} Å: resample the annotation onto the tomogram's grid")
    data = vol.data
    if is_slicer_seg(path):
        offset = slicer_offset(vol.header)
        if offset is not None and (tuple(data.shape) != tuple(shape) or any(offset)):
            placed = place_into(data, offset, shape, 0)
            lost = int(np.count_nonzero(data)) - int(np.count_nonzero(placed))
            if lost:  # an empty margin past the tomogram (common in Slicer's files) is cut, labels are not
                raise BadInput(path, f"{lost} labelled voxels of its extent {tuple(data.shape)} at offset "
                                     f"{offset} (z, y, x; Segmentation_ReferenceImageExtentOffset) lie outside "
                                     f"its tomogram {tuple(shape)}: it was drawn on another image's geometry")
            data = vol.data = placed
        if slicer_convention:
            data = slicer_to_classes(vol, class_names, path)
    if tuple(data.shape) != tuple(shape):
        raise BadInput(path, f"annotation shape {data.shape} differs from its tomogram {tuple(shape)}")
    if data.dtype == np.int8:
        data = data.view(np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise BadInput(path, "annotation values must be integers")
    if data.dtype != np.uint8 and (data.min(initial=0) < 0 or data.max(initial=0) > IGNORE):
        raise BadInput(path, "annotation values must lie in 0..255")
    return data.astype(np.uint8)


class RealSource:
    """Real tomograms and sparse annotations; one volume per pair, read whole and cached.

    The tomogram is normalised like the synthetic data (rank → normal quantile inside the field of
    view, 0 outside; reference bug 18 fixed: computed in float64 whatever the file's dtype). Labels
    outside the field of view become unlabelled; both are centre-cropped or padded in-plane to
    ``shape_yx`` so they batch with the synthetic windows. Tomogram and annotation are first
    transposed by ``tilt_axis`` / ``beam_axis`` (:func:`frame_permutation`) into the training frame.
    """

    def __init__(self, pairs: list[tuple[str, str]], dirs: list[str] | tuple[str, ...] = (), *,
                 n_classes: int, class_names: list[str] | None = None, fov_margin: float = 5.0,
                 slicer_convention: bool = True, shape_yx: tuple[int, int] | None = None,
                 tilt_axis: int = 0, beam_axis: int | None = None) -> None:
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        for d in dirs:
            if not Path(d).is_dir():
                raise BadInput(str(d), "real-data folder not found")
            self.pairs += find_pairs(Path(d))
        for img, lab in self.pairs:
            for f in (img, lab):
                if not Path(f).is_file():
                    raise BadInput(f, "file not found")
        self.n_classes = n_classes
        self.class_names = class_names or class_names_default(n_classes)
        self.fov_margin = fov_margin
        self.slicer_convention = slicer_convention
        self.shape_yx = shape_yx
        self.perm = frame_permutation(tilt_axis, beam_axis, "data.real.tilt_axis", "data.real.beam_axis")
        self.name = "real"
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        #: per pair: (annotated voxels in the file, those left in what training sees)
        self.annotated: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to DataLoader workers) without the cached volumes."""
        return {**self.__dict__, "_cache": {}}

    def load(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        if v in self._cache:
            return self._cache[v]
        img_path, lab_path = self.pairs[v]
        meta = read_volume_meta(img_path)
        img = meta.data
        lab = read_annotation(lab_path, img.shape, self.class_names, self.slicer_convention, meta.voxel_size)
        check_labels(lab, self.n_classes, lab_path)
        annotated = int(np.count_nonzero(lab != IGNORE))
        if self.perm != (0, 1, 2):  # into the training frame: tilt axis first, 0° beam along the rows
            img = np.ascontiguousarray(np.transpose(img, self.perm))
            lab = np.ascontiguousarray(np.transpose(lab, self.perm))
        if min(img.shape[1:]) / 2.0 - self.fov_margin <= 0:
            raise BadInput(img_path, f"in-plane shape {img.shape[1:]} too small for the field of view")
        # as predict normalises it (NaN/inf left out and 0, a blank volume refused); their labels ignored
        norm, finite = normalize_finite(img, self.fov_margin, str(img_path))
        keep = fov_mask(lab.shape[1:], self.fov_margin)[None]
        lab = np.where(keep if finite is None else keep & finite, lab, IGNORE).astype(np.uint8)
        if self.shape_yx is not None and tuple(img.shape[1:]) != tuple(self.shape_yx):
            norm = fit_inplane(norm, self.shape_yx, 0.0)
            lab = fit_inplane(lab, self.shape_yx, IGNORE)
            # a crop keeps corners of a larger field of view: outside the synthetic slices' disc
            # the input is 0 and nothing is scored, as in every synthetic window
            outside = ~fov_mask(tuple(self.shape_yx), self.fov_margin)
            norm[:, outside] = 0.0
            lab[:, outside] = IGNORE
        self.annotated[v] = (annotated, int(np.count_nonzero(lab != IGNORE)))
        self._cache[v] = (norm, lab)
        return norm, lab

    def index(self) -> list[SliceIndex]:
        """Slice flags of every pair; a warning for each pair none of whose annotated voxels lies in
        what training sees (the field of view, and the central crop to the synthetic slices' size),
        and BadInput when that is every pair: ``data.real.ratio`` would silently be 0."""
        flags = [slice_index(self.load(v)[1]) for v in range(len(self))]
        lost = [v for v in range(len(self)) if self.annotated[v][1] == 0]
        crop = (f" and the central {self.shape_yx[0]} × {self.shape_yx[1]} crop the synthetic slices' size asks"
                if self.shape_yx is not None else "")
        for v in lost:
            log.warning("%s: none of its %d annotated voxels lies in the field of view%s; it adds no training "
                        "window", self.pairs[v][1], self.annotated[v][0], crop)
        if self.pairs and len(lost) == len(self):
            raise BadInput("data.real", f"none of the {len(self)} real tomograms' annotated voxels lies in the field "
                                        f"of view{crop}: real data would never be trained on (annotate there, "
                                        "or crop the tomograms around the annotation)")
        return flags


def class_names_default(n_classes: int) -> list[str]:
    return class_names({}, n_classes)
