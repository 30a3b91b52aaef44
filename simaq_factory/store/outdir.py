"""The output directory: check it before anything is written, start it, or reopen it to resume."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zarr

from simaq_factory.errors import BadInput, BuildFailed, refuse_inside_dataset
from simaq_factory.store.dataset import array_metadata, create_arrays, read_card, update_card, write_json_atomic
from simaq_factory.store.layout import GROUP_NAME, PROVENANCE_DIR, SUMS, ArraySpec, card_disagreements

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds are not locked against each other
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RESOLVED = "recipe.resolved.json"
VERBATIM = "recipe.yaml"
#: Held (flock) by the one process that writes OUT; it stays behind, unlocked, when that ends.
LOCK = ".simaq-factory.lock"


def check_out_dir(out: Path, rid: str, *, sealing: bool = False) -> bool:
    """Validate ``out`` without writing. Return True when it holds this recipe's dataset (resume).

    Raises :class:`BadInput` when ``out`` is a file, not writable, not a dataset, or a dataset of
    another recipe.
    """
    if out.exists() and not out.is_dir():
        raise BadInput(str(out), "output path exists and is not a directory")
    refuse_inside_dataset(out.resolve().parent, str(out))  # a dataset inside another one
    if not out.exists():
        parent = out.parent if str(out.parent) else Path(".")
        probe = parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise BadInput(str(out), f"cannot create the output directory: {probe} is not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise BadInput(str(out), f"cannot create the output directory: {probe} is not writable")
        return False
    if not os.access(out, os.W_OK | os.X_OK):
        raise BadInput(str(out), "output directory is not writable")
    resolved = out / RESOLVED
    if not resolved.exists():
        if any(out.iterdir()) and not is_partial_start(out):
            if _lost_resolved_recipe(out, rid, "missing"):
                return True  # the resume writes it again (repair_recipe_files)
            raise BadInput(str(out), "output directory is not empty and holds no simaq-factory dataset")
        return False
    try:
        existing = json.loads(resolved.read_text())
        existing_id = existing["recipe_id"]
        if not isinstance(existing_id, str):
            raise TypeError("recipe_id is not a string")
    except (OSError, ValueError, KeyError, TypeError):
        if _lost_resolved_recipe(out, rid, "unreadable"):  # cut short, emptied: as if missing
            return True
        raise BadInput(str(resolved), "unreadable resolved recipe; not a simaq-factory dataset") from None
    if existing_id != rid:
        raise BadInput(
            str(out),
            f"holds a dataset of recipe {existing_id[:12]}, this recipe is {rid[:12]}: "
            "use a new output directory or the original recipe",
        )
    if not (out / GROUP_NAME).is_dir():
        raise BadInput(str(out), "dataset.zarr is missing; remove the directory and build again")
    records = out / PROVENANCE_DIR
    if records.exists() and not records.is_dir():  # not ours to delete, like a folder at a zarr.json
        raise BuildFailed(f"{records}: a file where the folder of the shards' provenance records belongs; "
                          "move it away and build again (the shards are then checked and rebuilt)")
    attrs = _card_attributes(out)
    if attrs is None:
        if (out / SUMS).is_file():  # sealed: its card is listed in SHA256SUMS, a new one would not match
            raise BuildFailed(f"{out / GROUP_NAME / 'zarr.json'}: the dataset card of a frozen dataset is "
                              "missing or unreadable; a frozen dataset is not rewritten: restore it from a "
                              "good copy")
        return True  # a resume rewrites it from the recipe under the lock (repair_card)
    status = attrs.get("status")
    if status == "frozen" and not (sealing and not (out / SUMS).is_file()):  # freeze may finish itself
        if not (out / SUMS).is_file():
            raise BadInput(str(out), "dataset is frozen, but its SHA256SUMS (written last) is missing: an "
                                     f"interrupted freeze; run `simaq-factory freeze {out}` to complete it")
        raise BadInput(str(out), "dataset is frozen; later writes are refused")
    return True


def _lost_resolved_recipe(out: Path, rid: str, how: str) -> bool:
    """Whether ``out`` is recipe ``rid``'s dataset (by the id its card records) whose
    ``recipe.resolved.json`` is ``how`` ("missing", "unreadable"): a resume of that recipe rewrites
    it. :class:`BadInput` when the card names another recipe; :class:`BuildFailed` when it is frozen."""
    attrs = _card_attributes(out)
    if attrs is None or "recipe_id" not in attrs:
        return False
    card_id = str(attrs["recipe_id"])
    if card_id != rid:
        raise BadInput(str(out), f"holds a dataset of recipe {card_id[:12]} (its {RESOLVED} is {how}), this "
                                 f"recipe is {rid[:12]}: use a new output directory or the original recipe")
    if (out / SUMS).is_file() or attrs.get("status") == "frozen":
        raise BuildFailed(f"{out / RESOLVED}: {how} in the frozen dataset {out}; a frozen dataset is not "
                          "rewritten: restore it from a good copy")
    return True


def _card_attributes(out: Path) -> dict[str, Any] | None:
    """The dataset card as ``dataset.zarr/zarr.json`` holds it, read as plain JSON (no Zarr); None when
    it is missing, unreadable or holds no attributes mapping."""
    try:
        attrs = json.loads((out / GROUP_NAME / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_sealed(out: Path, rid: str) -> bool:
    """Whether ``out`` holds recipe ``rid``'s dataset, frozen and sealed (its SHA256SUMS, written last by
    freeze, exists): a build of that recipe has nothing to do. False for anything else, which
    :func:`check_out_dir` then examines."""
    try:
        same = json.loads((out / RESOLVED).read_text())["recipe_id"] == rid
    except (OSError, ValueError, KeyError, TypeError):
        return False
    card = _card_attributes(out)
    return bool(same and card is not None and card.get("status") == "frozen" and (out / SUMS).is_file())


def start_out_dir(
    out: Path,
    *,
    recipe_text: str,
    resolved: dict[str, Any],
    rid: str,
    specs: dict[str, ArraySpec],
    card: dict[str, Any],
) -> None:
    """Create a fresh dataset directory: verbatim recipe, resolved recipe, empty arrays.

    The resolved recipe is written last, so a directory interrupted here is recognised as
    incomplete (no resolved recipe) and, being this tool's own partial start, is restarted.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / PROVENANCE_DIR).mkdir(exist_ok=True)
    (out / VERBATIM).write_text(recipe_text)
    create_arrays(out, specs, card)
    write_json_atomic(out / RESOLVED, {"recipe_id": rid, "recipe": resolved})


def is_partial_start(out: Path) -> bool:
    """True when ``out`` holds only what :func:`start_out_dir` writes before its final step."""
    if not out.is_dir() or (out / RESOLVED).exists():
        return False
    names = {p.name for p in out.iterdir()}
    return bool(names) and names <= {VERBATIM, GROUP_NAME, PROVENANCE_DIR, LOCK} and not any(
        (out / PROVENANCE_DIR).glob("*.json")
    )


def new_owner_token() -> str:
    """A new entry for OUT's writers' lock file, naming one claim of OUT (:func:`claim_out_dir`):
    ``"PID HOST ID"``, this process's pid, its host and a random id. A shard task compares it with
    the file (``task._check_owner``) to tell whether the build that submitted it still holds OUT; a
    bare pid was not enough: a re-submitted build in a container often gets its predecessor's pid
    (the entry process, pid 1), another node may hand out the same number, and one process may
    claim OUT twice (the Python API)."""
    return f"{os.getpid()} {socket.gethostname()} {uuid.uuid4().hex}"


def describe_owner(token: str, *, claim: bool = False) -> str:
    """A lock file entry (:func:`new_owner_token`, or the bare pid older versions wrote) in words:
    ``pid N``, with `` on host H`` when H is not this machine, and with ``claim`` its random id's
    first 8 digits (what tells apart two claims by one pid)."""
    parts = token.split()
    if not parts:
        return "an unknown process"
    who = f"pid {parts[0]}"
    if len(parts) > 1 and parts[1] != socket.gethostname():
        who += f" on host {parts[1]}"
    if claim and len(parts) > 2:
        who += f", claim {parts[2][:8]}"
    return who


@contextmanager
def claim_out_dir(out: Path, rid: str, *, sealing: bool = False, token: str | None = None) -> Iterator[bool]:
    """Hold ``out`` for this process while the block runs; yields whether it resumes a dataset.

    Creates ``out`` and takes an exclusive lock on its lock file; a second build (or freeze) of the
    same directory, here or on another node of a shared filesystem with working locks, is refused
    with :class:`BadInput` instead of interleaving writes. The directory is checked again under the
    lock (:func:`check_out_dir`): another process may have started or finished it meanwhile.
    ``sealing`` (freeze only) also admits a dataset whose card says frozen but whose SHA256SUMS,
    written last, is missing: an interrupted freeze, which freeze completes. ``token`` (default: a
    new :func:`new_owner_token`) is written into the lock file: the build passes the same token to
    its shard tasks, which write nothing once the file holds another.
    """
    token = token or new_owner_token()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(str(out), f"cannot create the output directory: {err.strerror}") from None
    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise BadInput(str(out / LOCK), f"cannot open the writers' lock file: {err.strerror} (remove it if "
                                        "it is not a file)") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
                who = f" ({describe_owner(holder)})" if holder[:1].isdigit() else ""
                raise BadInput(str(out), f"another simaq-factory process{who} is writing to it; wait "
                                         "for it to end or use another output directory") from None
            except OSError as err:  # a filesystem without locks (ENOLCK, EOPNOTSUPP): go on unguarded
                log.warning("%s: cannot lock (%s); a second build of it would not be detected",
                            out, err.strerror)
        # this claim's token, also where locks fail (the shard tasks compare it). Written over the
        # previous one in one pwrite, then cut to its length: the file is never empty meanwhile (was:
        # truncated first, and a leftover task reading it then took the empty file for "no owner")
        entry = f"{token}\n".encode()
        os.pwrite(fd, entry, 0)
        os.ftruncate(fd, len(entry))
        yield check_out_dir(out, rid, sealing=sealing)
    finally:
        os.close(fd)


def writer_pid(out: Path) -> int | None:
    """The pid of the process on this machine that holds ``out``'s writers' lock (a running build
    or freeze), read from ``/proc/locks`` without touching the lock; None when there is none, or
    none that this machine can see (another node of a shared filesystem, a system without
    ``/proc/locks``)."""
    return lock_holder(out / LOCK)


def lock_holder(path: Path) -> int | None:
    """The pid of the process on this machine that holds an exclusive ``flock`` on file ``path``,
    from ``/proc/locks`` (the file is not opened: where flock is emulated by POSIX locks, closing
    any descriptor of it would drop its holder's lock); None when there is none, or none this
    machine can see."""
    try:
        st = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146926 0 EOF"
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == "WRITE" and parts[5] == dev:
            return int(parts[4]) if parts[4].isdigit() else None
    return None


#: a temporary file of :func:`~simaq_factory.store.dataset.write_json_atomic` (``.NAME.json.XXXXXXXX.tmp``)
_JSON_TEMP = re.compile(r"^\..+\.json\.[A-Za-z0-9_]{8}\.tmp$")
#: zarr's local store writes every chunk, shard and zarr.json to ``NAME.<uuid4 hex>.partial`` and
#: renames it (zarr.json: ``zarr.<hex>.partial``); the preview writes ``.NAME.png.partial``, freeze
#: ``.manifest.jsonl.partial`` and ``.DATASET.md.partial``
_PARTIAL_TEMP = re.compile(r"^(?:.+\.[0-9a-f]{32}|\..+\.(?:png|jsonl|md))\.partial$")


def sweep_temp_files(out: Path) -> list[Path]:
    """Remove the temporary files of writes a killed process left in ``out`` (a SIGKILL between
    writing one and renaming it: our JSON records, zarr's chunks, shards and metadata, previews,
    freeze's manifest and card;
    their random names are never written again, and freeze sealed them in as part of the dataset).
    Only under the writers' lock, when no process of ours writes ``out``. One walk of ``out``.
    Returns the paths removed."""
    gone = []
    for path in out.rglob("*"):
        if ((_JSON_TEMP.match(path.name) or _PARTIAL_TEMP.match(path.name)) and path.is_file()
                and not path.is_symlink()):
            path.unlink(missing_ok=True)
            gone.append(path)
    if gone:
        log.info("%s: removed %d temporary file(s) an interrupted write left", out, len(gone))
    return gone


def repair_recipe_files(out: Path, rid: str, resolved: dict[str, Any], recipe_text: str) -> list[str]:
    """On resume (``out`` holds recipe ``rid``'s dataset, by the id it records): rewrite
    ``recipe.resolved.json`` when its recipe no longer hashes to that id (edited: the build holds the
    recipe itself), and write ``recipe.yaml`` when it is gone. Returns the names rewritten."""
    from simaq_factory.recipe.io import recipe_id, resolve

    done = []
    try:
        intact = recipe_id(resolve(json.loads((out / RESOLVED).read_text())["recipe"])) == rid
    except Exception:  # noqa: BLE001 - any edit that no longer parses as a recipe is damage too
        intact = False
    if not intact:
        write_json_atomic(out / RESOLVED, {"recipe_id": rid, "recipe": resolved})
        log.warning("%s: its recipe did not hash to its recorded id %s (edited); rewritten from this build's "
                    "recipe", out / RESOLVED, rid[:12])
        done.append(RESOLVED)
    if not (out / VERBATIM).is_file():
        (out / VERBATIM).write_text(recipe_text)
        log.warning("%s was missing; written again from this build's recipe", out / VERBATIM)
        done.append(VERBATIM)
    return done


def repair_card(out: Path, card: dict[str, Any]) -> bool:
    """Rewrite the group metadata (the dataset card) when ``status`` and ``verify`` report it as
    damage (missing, unreadable, not a Zarr v3 group), from ``card``, the card a fresh build of the
    recipe starts with, status "building". The build then records its noise banks and status in it
    again; the shards are judged by their own records. A readable card whose fields that the recipe
    decides disagree with it gets those fields from ``card``. True when it was rewritten."""
    from simaq_factory.store.inspect import group_metadata_problem  # inspect imports this module

    problem = group_metadata_problem(out)
    if problem is None:
        wrong = card_disagreements(read_card(out), card)
        if wrong:
            update_card(out, wrong)
            log.warning("%s: dataset card fields %s disagreed with the recipe; rewritten from it",
                        out / GROUP_NAME / "zarr.json", ", ".join(wrong))
        return bool(wrong)
    docs: dict[str, Any] = {}
    zarr.open_group(zarr.storage.MemoryStore(docs), mode="w", zarr_format=3,
                    attributes={**card, "status": "building"})
    _write_metadata(out / GROUP_NAME / "zarr.json", json.loads(docs["zarr.json"].to_bytes()))
    log.warning("%s; rewritten from the recipe", problem)
    return True


def _write_metadata(path: Path, doc: dict[str, Any]) -> None:
    """Rewrite a ``zarr.json``; a folder in its place is named, not removed (it is not ours to delete)."""
    if path.is_dir():
        raise BuildFailed(f"{path}: a folder where the Zarr metadata file belongs; remove it and build again")
    write_json_atomic(path, doc)


def repair_array_metadata(out: Path, specs: dict[str, ArraySpec]) -> list[str]:
    """Rewrite the ``zarr.json`` of every array whose metadata ``status`` and ``verify`` report as
    damage (:func:`~simaq_factory.store.inspect.array_metadata_problem`: missing, unreadable or not
    the recipe's layout); returns their names. The chunks are kept: each shard is then judged by its
    recorded checksums as usual, so data written under intact metadata survives."""
    from simaq_factory.store.inspect import array_metadata_problem  # inspect imports this module

    damaged = {name: problem for name, spec in specs.items()
               if (problem := array_metadata_problem(out, spec)) is not None}
    if damaged:
        docs = array_metadata({name: specs[name] for name in damaged})
        for name, problem in damaged.items():
            _write_metadata(out / GROUP_NAME / name / "zarr.json", docs[name])
            log.warning("%s; rewritten from the recipe", problem)
    return list(damaged)
