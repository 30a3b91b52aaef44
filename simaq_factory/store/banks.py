"""Noise banks inside the dataset: ``OUT/dataset.zarr/banks/<name>``, hashed in the dataset card.

Each bank is a Zarr v3 array float32 (entries, e, e, e), one inner chunk per entry, zstd; its
attributes hold the bank's spec and sha256 (:func:`simaq_factory.artifacts.banks.array_sha256`, over
dtype, shape and data, so it does not depend on compression). The dataset card's ``banks`` key
records ``{name: {"sha256", "shape", "dtype", "spec"}}``; that record is what workers and
``verify`` check against.

Roles follow the rest of the store: the driver builds the banks (:func:`ensure_banks`) before any
shard task is submitted and is the only writer of the record; a bank is written into
``OUT/.banks-partial/`` and renamed into place when complete, so a crash leaves either no bank or a
whole one. On resume a bank is reused when its data matches its hash, and regenerated otherwise.
Workers load the banks once per process (:func:`load_banks`, cached by path, hashes and device).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from simaq_factory.artifacts.banks import NoiseBanks, array_sha256, bank_specs, generate_bank
from simaq_factory.errors import BadInput, BuildFailed
from simaq_factory.store.dataset import COMPRESSION_LEVEL, read_card, update_card
from simaq_factory.store.layout import GROUP_NAME

log = logging.getLogger(__name__)

__all__ = ["BANKS_GROUP", "CARD_KEY", "bank_problems", "ensure_banks", "load_banks"]

BANKS_GROUP = "banks"
CARD_KEY = "banks"
PARTIAL_DIR = ".banks-partial"


def bank_path(out: Path, name: str) -> Path:
    return out / GROUP_NAME / BANKS_GROUP / name


def _expected(recipe: Any) -> dict[str, dict[str, Any]]:
    return bank_specs(recipe.artifacts, tuple(recipe.dataset.shape), recipe.seed)


def _read_checked(out: Path, name: str, sha256: str | None) -> tuple[np.ndarray | None, str]:
    """(data, "") when the stored bank reads and matches ``sha256`` (or its own attribute), else
    (None, reason)."""
    path = bank_path(out, name)
    if not (path / "zarr.json").exists():
        return None, "missing"
    try:
        arr = zarr.open_array(path, mode="r")
        data = np.asarray(arr[...])
        stored = arr.attrs.get("sha256")
    except Exception as err:  # noqa: BLE001 - any decode failure means damaged
        return None, f"unreadable ({type(err).__name__}: {err})"
    digest = array_sha256(data)
    if digest != (sha256 or stored):
        return None, "data does not match its sha256 (damaged)"
    return data, ""


def _write_atomic(out: Path, name: str, data: np.ndarray, spec: dict[str, Any], digest: str) -> None:
    tmp = out / PARTIAL_DIR / f"{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    arr = zarr.create_array(
        store=str(tmp), shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]),
        compressors=ZstdCodec(level=COMPRESSION_LEVEL), fill_value=0.0,
        dimension_names=("entry", "z", "y", "x"), attributes={"spec": spec, "sha256": digest},
        zarr_format=3,
    )
    arr[...] = data
    final = bank_path(out, name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def ensure_banks(out: Path, recipe: Any, device: torch.device | None = None) -> dict[str, Any]:
    """Driver only: make every bank of ``recipe`` present and intact in ``out``; return the record.

    Complete banks whose data matches their hash are reused; missing, half-written or damaged ones
    are regenerated (crack blocks on ``device``, default CPU) and written atomically, then the
    record is stored in the dataset card. Raises :class:`BadInput` when ``out`` records banks of
    another spec (another generator version) and :class:`BuildFailed` when a bank regenerates to
    bytes other than the recorded ones (the shards already built used the recorded ones).
    """
    recorded: dict[str, Any] = read_card(out).get(CARD_KEY) or {}
    zarr.open_group(out / GROUP_NAME, mode="r+").require_group(BANKS_GROUP)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)  # leftovers of an interrupted build
    record: dict[str, Any] = {}
    for name, spec in _expected(recipe).items():
        rec = recorded.get(name)
        if rec is not None and rec.get("spec") != spec:
            raise BadInput(str(out), f"its noise bank {name!r} was built with another spec or generator "
                           "version than this software makes; use a new output directory")
        data, reason = _read_checked(out, name, rec["sha256"] if rec else None)
        if data is not None and rec is None:
            stored = zarr.open_array(bank_path(out, name), mode="r").attrs.get("spec")
            if stored != spec:
                data, reason = None, "written for another spec"
        if data is None:
            if reason != "missing" or rec is not None:
                log.warning("noise bank %s: %s; regenerating it", name, reason)
            data = generate_bank(spec, device, processes=None)  # a process per core for big banks
            digest = array_sha256(data)
            if rec is not None and rec["sha256"] != digest:
                raise BuildFailed(
                    f"noise bank {name!r} regenerates to other bytes here (sha256 {digest[:12]}, recorded "
                    f"{rec['sha256'][:12]}); the shards already built used the recorded bank"
                )
            _write_atomic(out, name, data, spec, digest)
        record[name] = {"sha256": array_sha256(data), "shape": list(data.shape), "dtype": str(data.dtype),
                        "spec": spec}
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    if record != recorded:
        update_card(out, {CARD_KEY: record})
    return record


def bank_problems(out: Path, recipe: Any) -> list[str]:
    """For ``verify``: one line per missing, damaged or mismatched bank (empty when all is well)."""
    recorded: dict[str, Any] = read_card(out).get(CARD_KEY) or {}
    problems = []
    for name, spec in _expected(recipe).items():
        rec = recorded.get(name)
        if rec is None:
            problems.append(f"noise bank {name}: not recorded in the dataset card")
        elif rec.get("spec") != spec:
            problems.append(f"noise bank {name}: recorded spec differs from the recipe's")
        else:
            data, reason = _read_checked(out, name, rec["sha256"])
            if data is None:
                problems.append(f"noise bank {name}: {reason}")
    return problems


_LOADED: OrderedDict[tuple[str, tuple[tuple[str, str], ...], str], NoiseBanks] = OrderedDict()
_LOADED_SIZE = 2


def load_banks(out: Path, device: torch.device) -> NoiseBanks:
    """The banks of the dataset at ``out`` on ``device``, read and hash-checked once per process.

    Raises :class:`BuildFailed` when a bank is missing or does not match its recorded hash.
    """
    recorded: dict[str, Any] = read_card(out).get(CARD_KEY) or {}
    if not recorded:
        raise BuildFailed(f"{out}: no noise banks recorded in the dataset card; run `simaq-factory build`")
    digests = tuple(sorted((name, str(rec["sha256"])) for name, rec in recorded.items()))
    key = (str(Path(out).resolve()), digests, str(device))
    hit = _LOADED.get(key)
    if hit is not None:
        _LOADED.move_to_end(key)
        return hit
    arrays = {}
    for name, sha in digests:
        data, reason = _read_checked(out, name, sha)
        if data is None:
            raise BuildFailed(f"noise bank {name} of {out}: {reason}; run `simaq-factory build` to repair")
        arrays[name] = torch.from_numpy(data).to(device)
    banks = NoiseBanks(arrays, dict(digests))
    _LOADED[key] = banks
    while len(_LOADED) > _LOADED_SIZE:
        _LOADED.popitem(last=False)
    return banks
