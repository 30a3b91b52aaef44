"""Built-in baselines: reconstruct every sample from its stored sinogram and angles only.

A baseline sees exactly what a user's algorithm sees — ``sinogram[i]`` (rows past the sample's angle
count are NaN), the nominal ``angles[i]`` and the geometry conventions of the recipe
(``reconstruction.center``, ``weighting``, ``clip_circle``) — never the phantom, the jittered
forward angles or the artifact parameters. The output is a Zarr group in the dataset's layout::

    PRED/            attributes: format, method, reconstruction (config), source (dataset path,
      recon          recipe id), status, seconds
                     float32 (N, Z, Y, X), chunks (1, chunk_z, Y, X); with three acquisition axes
                     (N, 3, Z, Y, X), chunks (1, 1, chunk_z, Y, X), like the dataset's recon

With three axes every acquisition ``k`` is reconstructed from ``sinogram[i, k]`` / ``angles[i, k]``
in the frame of its tilt axis and stored back in (z, y, x) (:mod:`simaq_factory.acquisition.axes`).

It is built in ``.PRED.partial`` next to ``PRED``, one sample at a time (``progress.json`` lists the
finished samples, so an interrupted run resumes), and renamed to ``PRED`` when complete: its status
attribute set to ``complete``, ``progress.json`` removed, then the rename; a run killed between the
last two finds a complete ``.PRED.partial`` of the same baseline and only renames it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from simaq_factory.acquisition.axes import from_frame
from simaq_factory.errors import BadInput
from simaq_factory.score.inputs import DamagedStore, open_ground_truth
from simaq_factory.store.dataset import write_json_atomic
from simaq_factory.store.layout import GROUP_NAME
from simaq_factory.tomo import Geometry, ReconstructionConfig, reconstruct

__all__ = ["PREDICTION_FORMAT", "available_methods", "method_config", "run_baseline"]

logger = logging.getLogger(__name__)

PREDICTION_FORMAT = "simaq-factory-prediction"
_FBP = {"fbp-ramlak": "ram-lak", "fbp-hamming": "hamming"}
_ITERATIVE = ("sirt", "cgls")
_PROGRESS = "progress.json"


def _supported_recon_methods() -> tuple[str, ...]:
    hint = typing.get_type_hints(ReconstructionConfig)["method"]
    return tuple(str(a) for a in typing.get_args(hint))


def available_methods() -> list[str]:
    """Baseline names this installation supports (SIRT/CGLS only when ``reconstruct`` has them)."""
    have = _supported_recon_methods()
    return list(_FBP) + [m for m in _ITERATIVE if m in have]


def method_config(method: str, dataset_recon: dict[str, Any], iterations: int | None = None,
                  nonneg: bool | None = None) -> ReconstructionConfig:
    """The :class:`ReconstructionConfig` of baseline ``method`` for a dataset whose resolved
    ``reconstruction`` section is ``dataset_recon`` (its centre, weighting and clipping are kept).
    ``iterations`` / ``nonneg`` (None: the config's defaults) apply to sirt and cgls only.
    """
    if method not in available_methods():
        raise BadInput("--method", f"unknown baseline {method!r}; choose one of {', '.join(available_methods())}")
    names = {f.name for f in dataclasses.fields(ReconstructionConfig)}
    keep = {k: v for k, v in dataset_recon.items() if k in ("center", "weighting", "clip_circle") and k in names}
    if method in _FBP:
        keep.update(method="fbp", filter=_FBP[method])
    else:
        keep["method"] = method
        for flag, key, value in (("--iterations", "iterations", iterations), ("--nonneg", "nonneg", nonneg)):
            if value is not None:
                if key not in names:
                    raise BadInput(flag, f"this installation's reconstruction has no {key!r} field")
                keep[key] = value
    for flag, value in (("--iterations", iterations), ("--nonneg", nonneg)):
        if value is not None and method in _FBP:
            raise BadInput(flag, f"only applies to iterative methods, not {method}")
    try:
        return ReconstructionConfig(**keep)
    except (TypeError, ValueError) as err:
        text = str(err)
        flag = ("--iterations" if iterations is not None and "iterations" in text else
                "--nonneg" if nonneg is not None and "nonneg" in text else "--method")
        raise BadInput(flag, f"cannot configure {method}: {text}") from None


def _config_json(cfg: ReconstructionConfig) -> dict[str, Any]:
    """The configuration as run: for an iterative method ``nonneg`` is the value used (its method
    default when not set), not null."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if out.get("method") in _ITERATIVE and out.get("nonneg") is None and hasattr(cfg, "effective_nonneg"):
        out["nonneg"] = bool(cfg.effective_nonneg)
    return out


def reconstruct_sample(sino: np.ndarray, angles_deg: np.ndarray, n: int, cfg: ReconstructionConfig,
                       device: torch.device) -> np.ndarray:
    """Reconstruct one sample: ``sino`` (A_max, Z, D) NaN-padded, ``angles_deg`` (A_max,) NaN-padded.

    Returns a float32 (Z, n, n) volume. Raises ``ValueError`` on inconsistent padding.
    """
    keep = np.isfinite(angles_deg)
    if not keep.any():
        raise ValueError("no angles stored")
    proj = sino[keep]
    if not np.all(np.isfinite(proj)):
        raise ValueError("stored sinogram has NaN/inf rows where angles are given")
    geom = Geometry(n=n, angles=tuple(math.radians(float(a)) for a in angles_deg[keep]),
                    det_count=proj.shape[-1], center=cfg.center, weighting=cfg.weighting)
    vol = reconstruct(torch.from_numpy(np.ascontiguousarray(proj, dtype=np.float32)).to(device), geom, cfg)
    return vol.to(torch.float32).cpu().numpy()


def _partial_path(pred: Path) -> Path:
    return pred.parent / f".{pred.name}.partial"


def run_baseline(
    gt_dir: Path,
    pred: Path,
    method: str,
    *,
    iterations: int | None = None,
    nonneg: bool | None = None,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Reconstruct every sample of the dataset at ``gt_dir`` with ``method`` into the Zarr ``pred``.

    Returns ``{"path", "n_samples", "built", "skipped", "seconds"}``. Resumes an interrupted run of
    the same method on the same dataset; refuses to overwrite an existing, different ``pred``.
    """
    device = device or torch.device("cpu")
    gt = open_ground_truth(gt_dir)
    for name in ("sinogram", "angles"):
        if name not in gt.group:
            raise BadInput(str(gt_dir), f"dataset has no stored {name!r} (build it with "
                           f"dataset.outputs.{name}: true); baselines need the projections")
    cfg = method_config(method, gt.recipe.get("reconstruction", {}), iterations, nonneg)
    ident = {"method": method, "reconstruction": _config_json(cfg),
             "source": {"recipe_id": gt.recipe_id}}
    if pred.exists():
        if _is_same_complete(pred, ident):
            return {"path": pred, "n_samples": gt.n_samples, "built": 0, "skipped": gt.n_samples,
                    "seconds": 0.0}
        raise BadInput(str(pred), "already exists (and is not this baseline of this dataset); "
                       "choose another -o or remove it")
    tmp = _partial_path(pred)
    if not (tmp / _PROGRESS).exists() and _is_same_complete(tmp, ident):
        # killed after the last step removed progress.json and before the rename: it is finished,
        # and only the rename is left (was: taken for another configuration's unfinished output,
        # discarded with a warning saying so, and every sample reconstructed again)
        os.replace(tmp, pred)
        logger.info("%s: finished earlier; renamed %s -> %s", method, tmp, pred)
        return {"path": pred, "n_samples": gt.n_samples, "built": 0, "skipped": gt.n_samples,
                "seconds": 0.0}
    done = _open_partial(tmp, ident, gt.n_samples, gt.pred_shape, chunk_z=_chunk_z(gt),
                         extra={"source_path": str(gt_dir.resolve())})
    t0 = time.perf_counter()
    built = 0
    arr = zarr.open_group(tmp, mode="r+")["recon"]
    for i in range(gt.n_samples):
        if i in done:
            continue
        try:
            vol = _reconstruct_stored(gt, i, cfg, device)
        except (BadInput, DamagedStore):
            if not done:  # nothing reconstructed yet: leave nothing behind
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        arr[i] = vol
        done.add(i)
        write_json_atomic(tmp / _PROGRESS, {"ident": ident, "done": sorted(done)})
        built += 1
        if progress is not None:
            progress(len(done), gt.n_samples)
    seconds = time.perf_counter() - t0
    group = zarr.open_group(tmp, mode="r+")
    group.update_attributes({"status": "complete", "seconds": round(seconds, 3),
                             "device": str(device)})
    (tmp / _PROGRESS).unlink()
    os.replace(tmp, pred)
    logger.info("%s: %d sample(s) in %.1f s -> %s", method, built, seconds, pred)
    return {"path": pred, "n_samples": gt.n_samples, "built": built,
            "skipped": gt.n_samples - built, "seconds": seconds}


def _reconstruct_stored(gt: Any, i: int, cfg: ReconstructionConfig, device: torch.device) -> np.ndarray:
    """Sample ``i`` of ``gt`` reconstructed from its stored sinogram and angles. :class:`DamagedStore`
    when they cannot be read back as written, :class:`BadInput` when they are inconsistent."""
    sino, ang = gt.read("sinogram", i), gt.read("angles", i)
    n = gt.shape[1]
    try:
        if gt.n_axes == 1:
            return reconstruct_sample(sino, ang, n, cfg, device)
        return np.stack([from_frame(reconstruct_sample(sino[k], ang[k], n, cfg, device), k)
                         for k in range(gt.n_axes)])
    except ValueError as err:
        # NaN where angles are given is what a flipped byte can decode to: a damaged store
        # (runtime failure) when the shard no longer matches its checksum, else bad input
        for name in ("sinogram", "angles"):
            damage = gt.shard_damage(name, i)
            if damage is not None:
                raise DamagedStore(f"{gt.out / GROUP_NAME / name}, sample {i}: {damage} ({err}; "
                                   f"a damaged store){gt.verify_hint}") from None
        raise BadInput(f"{gt.out} (sample {i})", str(err)) from None


def _chunk_z(gt: Any) -> int:
    chunks = getattr(gt.group["phantom"], "chunks", None)
    return int(chunks[1]) if chunks else min(8, gt.shape[0])


def _is_same_complete(pred: Path, ident: dict[str, Any]) -> bool:
    try:
        attrs = dict(zarr.open_group(pred, mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a Zarr group: not ours
        return False
    return attrs.get("status") == "complete" and all(
        json.dumps(attrs.get(k), sort_keys=True) == json.dumps(v, sort_keys=True) for k, v in ident.items()
    )


def _open_partial(tmp: Path, ident: dict[str, Any], n_samples: int, shape: tuple[int, ...],
                  chunk_z: int, extra: dict[str, Any]) -> set[int]:
    """Open (resume) or create the partial output; returns the finished sample indices.

    ``shape`` is one sample's: (Z, Y, X), or (axes, Z, Y, X) for a three-axis dataset.
    """
    progress = tmp / _PROGRESS
    if progress.exists():
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            state = None
        if state is not None and json.dumps(state.get("ident"), sort_keys=True) == json.dumps(ident, sort_keys=True):
            logger.info("resuming %s: %d sample(s) done", tmp, len(state["done"]))
            return {int(i) for i in state["done"]}
    if tmp.exists():
        logger.warning("discarding the unfinished output %s (another configuration)", tmp)
        shutil.rmtree(tmp)  # our own unfinished start, or another configuration's: start over
    *ax, z, y, x = shape
    group = zarr.open_group(tmp, mode="w", zarr_format=3, attributes={
        "format": PREDICTION_FORMAT, "version": 1, "status": "partial", **ident, **extra})
    group.create_array("recon", shape=(n_samples, *ax, z, y, x), dtype="float32",
                       chunks=(1, *(1 for _ in ax), min(chunk_z, z), y, x), compressors=ZstdCodec(level=3),
                       fill_value=float("nan"),
                       dimension_names=("sample", *("axis" for _ in ax), "z", "y", "x"))
    write_json_atomic(progress, {"ident": ident, "done": []})
    return set()
