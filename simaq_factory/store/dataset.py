"""Create, write and check a dataset directory (design §5).

Roles are strict: the *driver* creates the group, its arrays and the group attributes (the dataset
card) and is their only writer; a *worker* writes one whole shard of every array, then that shard's
provenance file, last, by atomic rename. A shard is done exactly when its provenance file exists
and the sha256 of each of its shard files matches the one recorded there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from simaq_factory.store.layout import GROUP_NAME, PROVENANCE_DIR, ArraySpec, provenance_path

COMPRESSION_LEVEL = 3
# the process umask, read once at import (reading it means setting it, which is not thread-safe)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _create_arrays(group: zarr.Group, specs: dict[str, ArraySpec]) -> None:
    for spec in specs.values():
        group.create_array(
            spec.name,
            shape=spec.shape,
            dtype=spec.dtype,
            chunks=spec.chunks,
            shards=spec.shards,
            compressors=ZstdCodec(level=COMPRESSION_LEVEL),
            fill_value=spec.fill_value,
            dimension_names=spec.dimension_names,
        )


def create_arrays(out: Path, specs: dict[str, ArraySpec], card: dict[str, Any]) -> None:
    """Driver only: create ``OUT/dataset.zarr`` with empty arrays and the dataset card."""
    _create_arrays(zarr.open_group(out / GROUP_NAME, mode="w", zarr_format=3, attributes=card), specs)


def array_metadata(specs: dict[str, ArraySpec]) -> dict[str, dict[str, Any]]:
    """The ``zarr.json`` document of each array, exactly as :func:`create_arrays` writes it."""
    docs: dict[str, Any] = {}
    _create_arrays(zarr.open_group(zarr.storage.MemoryStore(docs), mode="w", zarr_format=3), specs)
    return {name: json.loads(docs[f"{name}/zarr.json"].to_bytes()) for name in specs}


def array_layout(meta: Any) -> dict[str, Any]:
    """An array's metadata (``zarr.Array.metadata``) as zarr parses it, less its attributes: what
    :func:`create_arrays` decides (shape, dtype, chunk grid, codecs with their byte order and shard
    index, fill value, dimension names). Compared parsed, so a ``zarr.json`` written by another
    zarr version, spelling defaults out or not, compares equal when it says the same."""
    return {k: v for k, v in meta.to_dict().items() if k != "attributes"}


def expected_layouts(specs: dict[str, ArraySpec]) -> dict[str, dict[str, Any]]:
    """:func:`array_layout` of each array as :func:`create_arrays` creates it."""
    group = zarr.open_group(zarr.storage.MemoryStore({}), mode="w", zarr_format=3)
    _create_arrays(group, specs)
    return {name: array_layout(group[name].metadata) for name in specs}


def update_card(out: Path, updates: dict[str, Any]) -> None:
    """Driver only: merge ``updates`` into the group attributes."""
    zarr.open_group(out / GROUP_NAME, mode="r+").update_attributes(updates)


def read_card(out: Path) -> dict[str, Any]:
    return dict(zarr.open_group(out / GROUP_NAME, mode="r").attrs)


def write_shard(
    out: Path, specs: dict[str, ArraySpec], first_sample: int, arrays: dict[str, np.ndarray]
) -> None:
    """Worker: write one shard's samples of every array, each in a single region write."""
    group = zarr.open_group(out / GROUP_NAME, mode="r+")
    for name, spec in specs.items():
        data = arrays[name]
        if data.dtype != np.dtype(spec.dtype) or data.shape[1:] != spec.shape[1:]:
            raise ValueError(
                f"{name}: expected {spec.dtype} {('k',) + spec.shape[1:]}, got {data.dtype} {data.shape}"
            )
        group[name][first_sample : first_sample + data.shape[0]] = data


def shard_file(out: Path, spec: ArraySpec, shard_index: int) -> Path:
    return out / GROUP_NAME / spec.name / spec.shard_key(shard_index)


def sha256_file(path: Path) -> str | None:
    """Hex digest of a file, or None when it does not exist (an all-fill shard is not written)."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Environment variable: ``off`` disables :class:`DigestCache` (every check hashes every file);
#: a path puts its files there instead of ``$XDG_CACHE_HOME/simaq-factory/digests``.
DIGEST_CACHE_ENV = "SIMAQ_FACTORY_DIGEST_CACHE"
#: A file whose change time is this recent when it is hashed is not cached: file timestamps are
#: coarse (a kernel tick), so a write within the same tick after the hash would leave them alone.
RACY_NS = 2_000_000_000


def digest_cache_dir() -> Path | None:
    """Where :class:`DigestCache` keeps its files (None: disabled by :data:`DIGEST_CACHE_ENV`)."""
    setting = os.environ.get(DIGEST_CACHE_ENV, "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "simaq-factory" / "digests"


class DigestCache:
    """The sha256 of the shard files of one dataset as last hashed, with each file's identity then
    (inode, size, modification and change time): ``status``, a resumed ``build``, ``export`` and
    the training reader re-hash only the files that changed since, where they re-hashed every byte
    of the dataset (terabytes at paper scale, hours before a resume could start). Any write to a
    file, and ``touch`` or ``os.utime`` too, moves its change time, which no user call can set back:
    a damaged file is hashed again. ``verify`` never trusts the cache (``trust=False``): it hashes
    every file, as after a copy or a transfer, and records what it found, so that damage found
    by ``verify`` (bit rot leaves the timestamps alone) is damage to the next build too.

    One JSON file per dataset and user (:func:`digest_cache_dir`; keyed by the dataset's resolved
    path), outside the dataset: a frozen or read-only dataset is never written. Thread-safe;
    :meth:`save` writes it once (atomically; failures are ignored: the cache is an optimisation)."""

    def __init__(self, out: Path, *, trust: bool = True) -> None:
        self.out = out
        self.trust = trust
        folder = digest_cache_dir()
        self.where = where = str(out.resolve())
        self.path = None if folder is None else folder / f"{hashlib.sha256(where.encode()).hexdigest()[:32]}.json"
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        self._lock = threading.Lock()
        if self.path is not None:
            try:
                doc = json.loads(self.path.read_text())
                if isinstance(doc, dict) and doc.get("version") == 1 and doc.get("dataset") == where:
                    self.entries = {k: v for k, v in doc.get("files", {}).items()
                                    if isinstance(v, list) and len(v) == 5}
            except (OSError, ValueError):
                pass

    @staticmethod
    def _identity(st: os.stat_result) -> list[int]:
        return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def sha256(self, path: Path) -> str | None:
        """:func:`sha256_file` of ``path`` (a file of this dataset), from the cache when the file is
        the one it was when last hashed."""
        if self.path is None:
            return sha256_file(path)
        key = path.relative_to(self.out).as_posix()
        try:
            before = os.stat(path)
        except FileNotFoundError:
            return None
        with self._lock:
            entry = self.entries.get(key)
        if self.trust and entry is not None and entry[:4] == self._identity(before):
            return str(entry[4])
        t0 = time.time_ns()
        digest = sha256_file(path)
        try:
            after = os.stat(path)
        except OSError:
            return digest
        same = self._identity(after) == self._identity(before)
        if digest is not None and same and after.st_ctime_ns < t0 - RACY_NS:
            with self._lock:
                self.entries[key] = [*self._identity(after), digest]
                self.changed = True
        return digest

    def save(self) -> None:
        """Write the cache if it changed (atomically; an error leaves the old one or none)."""
        if self.path is None or not self.changed:
            return
        with self._lock:
            doc = {"version": 1, "dataset": self.where, "files": dict(self.entries)}
        try:
            write_json_atomic(self.path, doc, indent=None)  # compact: tens of thousands of entries
        except OSError:
            pass


def hash_threads() -> int:
    """Files hashed at once by :func:`sha256_files` and :func:`shard_states`: one per usable core, at
    most 8. hashlib and file reads release the GIL, so threads hash on every core and overlap the
    read latency of a shared filesystem."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


#: ``progress(phase, done, total)``: a long command's work in phases ("shard checksums", ...), told
#: when a phase starts (``done`` 0) and after each item; the CLI draws it as a bar on stderr.
Progress = Callable[[str, int, int], None]


def map_in_order(fn: Any, items: Sequence[Any], threads: int,
                 progress: Progress | None = None, phase: str = "") -> list[Any]:
    """``[fn(x) for x in items]``, in order, on up to ``threads`` threads (for work that releases
    the GIL: hashing, reading, decoding). On Ctrl-C or an error the items not started are not run.
    ``progress`` is told ``phase`` with the items done (in order) so far."""
    if progress is not None:
        progress(phase, 0, len(items))

    def told(results: Iterable[Any]) -> list[Any]:
        done = []
        for r in results:
            done.append(r)
            if progress is not None:
                progress(phase, len(done), len(items))
        return done

    threads = min(threads, len(items))
    if threads < 2:
        return told(fn(x) for x in items)
    pool = ThreadPoolExecutor(threads)
    try:
        return told(pool.map(fn, items))
    finally:  # a plain shutdown would first run every queued item
        pool.shutdown(wait=True, cancel_futures=True)


def sha256_files(paths: Sequence[Path], progress: Progress | None = None) -> list[str | None]:
    """:func:`sha256_file` of each path, in order, hashed on :func:`hash_threads` threads."""
    return map_in_order(sha256_file, paths, hash_threads(), progress, "hashing files")


def shard_checksums(out: Path, specs: dict[str, ArraySpec], shard_index: int) -> dict[str, str | None]:
    return {name: sha256_file(shard_file(out, spec, shard_index)) for name, spec in specs.items()}


def write_json_atomic(path: Path, payload: dict[str, Any], *, indent: int | None = 1) -> None:
    """Write JSON to a temporary file in the same directory, fsync, then rename over ``path``
    (``indent`` None: on one line, without spaces)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a shared dataset's records
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=indent, sort_keys=True,
                      separators=(",", ":") if indent is None else None)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: key of a provenance record's own digest: sha256 of the record without it, as canonical JSON
RECORD_DIGEST = "record_sha256"


def record_digest(record: dict[str, Any]) -> str:
    """The digest a shard's provenance record carries of itself (:data:`RECORD_DIGEST`): an edited
    or damaged record is told from the one its shard task wrote, as the shard files are by their
    checksums. Computed on the record as read back from JSON (string keys, lists)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != RECORD_DIGEST}))
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_provenance(out: Path, shard_index: int) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None); (None, None) when the shard has no record (not built); (None, why) when the
    record or the provenance folder is there but cannot be read as one (damaged)."""
    path = provenance_path(out, shard_index)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None, None
    except NotADirectoryError:
        return None, f"{path.parent.name}/ is not a folder"
    except OSError as err:
        return None, f"provenance record unreadable ({err.strerror or type(err).__name__})"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "provenance record is not valid JSON (truncated or damaged)"
    if not isinstance(record, dict):
        return None, "provenance record is not a JSON object"
    return record, None


def read_provenance(out: Path, shard_index: int) -> dict[str, Any] | None:
    """The shard's provenance record; None when it has none or it cannot be read (both not done)."""
    return load_provenance(out, shard_index)[0]


def shard_state(
    out: Path, specs: dict[str, ArraySpec], shard_index: int, recipe_id: str,
    digests: DigestCache | None = None,
) -> tuple[str, str]:
    """("done" | "pending" | "damaged", reason) for one shard: done when its record reads, is this
    recipe's, matches its own digest, is this shard's (not another's moved here) and every shard
    file matches the checksum it records (hashed through ``digests`` when given)."""
    prov, unreadable = load_provenance(out, shard_index)
    if unreadable is not None:
        return "damaged", unreadable
    if prov is None:
        return "pending", "no provenance record"
    if prov.get("recipe_id") != recipe_id:
        return "damaged", "provenance belongs to another recipe"
    if RECORD_DIGEST in prov and prov[RECORD_DIGEST] != record_digest(prov):  # older records have none
        return "damaged", "provenance record does not match its digest (edited or damaged)"
    theirs = prov.get("shard", shard_index)
    if theirs != shard_index:  # records renamed or swapped: the data files are not at fault
        where = f"; it belongs at {PROVENANCE_DIR}/shard-{theirs:06d}.json" if isinstance(theirs, int) else ""
        return "damaged", f"provenance record is that of shard {theirs!r} (misplaced{where})"
    recorded = prov.get("checksums", {})
    for name, spec in specs.items():
        if name not in recorded:
            return "damaged", f"no checksum recorded for {name}"
        try:
            path = shard_file(out, spec, shard_index)
            digest = digests.sha256(path) if digests is not None else sha256_file(path)
        except OSError as err:  # a folder in its place, no read permission
            return "damaged", f"{name} shard file unreadable ({err.strerror or type(err).__name__})"
        if digest != recorded[name]:
            return "damaged", f"{name} shard file does not match its checksum"
    return "done", ""


def shard_states(
    out: Path, specs: dict[str, ArraySpec], shards: Iterable[int], recipe_id: str,
    progress: Progress | None = None, *, rehash: bool = False,
) -> list[tuple[str, str]]:
    """:func:`shard_state` of each of ``shards``, in order, shards checked on :func:`hash_threads`
    threads. Files unchanged since they were last hashed are not hashed again (:class:`DigestCache`),
    unless ``rehash`` (``verify``: every byte is read, and the cache learns what was found)."""
    digests = DigestCache(out, trust=not rehash)
    try:
        return map_in_order(lambda s: shard_state(out, specs, s, recipe_id, digests), list(shards),
                            hash_threads(), progress, "shard checksums")
    finally:
        digests.save()
