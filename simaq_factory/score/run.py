"""Score predictions against a dataset's ground truth and write ``scores.json``, ``samples.csv`` and
``report.html`` (see ``docs/benchmarking.md``)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simaq_factory.errors import BadInput
from simaq_factory.score.aggregate import compare, group_stats
from simaq_factory.score.inputs import GroundTruth, Prediction, open_ground_truth, open_prediction
from simaq_factory.score.metrics import confusion_counts, iou_dice, nrmse, psnr, ssim

__all__ = ["ScoreResult", "affine_fit", "check_report_dir", "score", "score_sample_labels",
           "score_sample_recon", "write_outputs"]

logger = logging.getLogger(__name__)

RECON_METRICS = ["nrmse", "psnr", "ssim"]
SCORES_FORMAT = "simaq-factory-scores"
SCORES_VERSION = 1
#: Default FOV margin (voxels inside the reconstruction circle): the projector's input support n/2 − 2.
DEFAULT_FOV_MARGIN = 2.0

CONVENTIONS = {
    "field_of_view": "cylinder along the tilt axis; (y, x) disk of radius n//2 - fov_margin around the "
                     "rotation axis (reconstruction.center); fov_margin (its value: the key fov_margin) "
                     "defaults to 2 voxels, the support of the projector's input (objects never lie outside it, "
                     "only FBP's edge artifacts do); reconstructions and segmentations are both scored "
                     "inside it",
    "data_range": "ground-truth phantom max - min inside the field of view, per sample",
    "nrmse": "||pred - gt|| / ||gt|| over field-of-view voxels",
    "psnr": "10 log10(data_range^2 / MSE) over field-of-view voxels, dB",
    "ssim": "3D Gaussian-window SSIM (sigma 1.5, radius 5, K1 0.01, K2 0.03, population covariance, "
            "reflect borders) of both volumes zeroed outside the field of view, averaged over it",
    "iou_dice": "per class over the voxels inside the field of view whose ground truth is not the "
                "ignore label (voxels outside it count as ignored, as in simaq-train evaluate and "
                "baseline, whose data.fov_margin defaults to 5 voxels, not 2: pass --fov-margin 5 to "
                "compare with them); undefined (null) when the class is in neither volume; mean_iou = mean over "
                "defined non-background classes",
    "statistics": "per metric: n, n_undefined (NaN), n_infinite, mean, std (population, ddof 0), "
                  "median, q1, q3 (linear interpolation between order statistics, numpy's default), "
                  "min, max",
    "non_finite": "NaN (undefined) is written as null; an infinite value (the PSNR of a perfect "
                  "prediction) as the string \"inf\" and counted in n_infinite; it takes part in "
                  "medians and rankings",
}


AXES_DOC = ("three acquisition axes: a row (and every count and statistic) is one acquisition, "
            "(sample, axis k); its span_deg is that acquisition's; recon[i, k] is scored against the "
            "phantom inside the cylinder about volume axis k (the tilt axis), labels[i, k] against "
            "the labels")

FIT_DOC = {
    "affine": "affine: each reconstruction is first mapped by the least-squares a*pred + b, a >= 0, "
              "against the phantom inside the field of view (fit_scale, fit_offset per sample), so raw "
              "FBP values (ice layer, arbitrary scale) are compared by structure; a reconstruction "
              "anti-correlated with the phantom gets a = 0 (its mean), not an inverted copy",
    "none": "none: reconstructions are compared with the phantom as given (same units expected: "
            "attenuation per voxel length)",
}


@dataclass
class ScoreResult:
    """What :func:`score` computed: the JSON payload, the rows and one example sample's slices."""

    payload: dict[str, Any]
    rows: list[dict[str, Any]]
    examples: dict[str, Any]


def affine_fit(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(a, b)`` minimising ``||a·pred + b − gt||²`` subject to ``a ≥ 0`` (``a = 0``
    for a constant or anti-correlated pred: an inverted reconstruction is not a correct one)."""
    g = np.asarray(gt, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    pm, gm = float(p.mean()), float(g.mean())
    var = float(np.mean((p - pm) ** 2))
    a = max(float(np.mean((p - pm) * (g - gm))) / var, 0.0) if var > 0 else 0.0
    return a, gm - a * pm


def score_sample_recon(gt_vol: np.ndarray, pred_vol: np.ndarray, fov: np.ndarray,
                       fit: str = "affine") -> dict[str, float]:
    """NRMSE, PSNR and SSIM of one (Z, Y, X) reconstruction inside the (Y, X) ``fov`` disk.

    ``fit="affine"`` first maps the prediction by the least-squares ``a·pred + b`` against the
    ground truth inside the FOV (``fit_scale``, ``fit_offset`` are returned too): raw reconstructions
    carry the ice layer and an arbitrary scale, so this compares structure; ``"none"`` scores the
    values as given.
    """
    g = np.asarray(gt_vol, dtype=np.float64)
    p = np.asarray(pred_vol, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("prediction holds NaN or infinite values")
    out: dict[str, float] = {}
    if fit == "affine":
        a, b = affine_fit(g[:, fov], p[:, fov])
        p = a * p + b
        out.update(fit_scale=a, fit_offset=b)
    elif fit != "none":
        raise ValueError(f"fit must be 'affine' or 'none', got {fit!r}")
    g_in, p_in = g[:, fov], p[:, fov]
    data_range = float(g_in.max() - g_in.min()) if g_in.size else 0.0
    return {
        "nrmse": nrmse(g_in, p_in),
        "psnr": psnr(g_in, p_in, data_range),
        "ssim": ssim(g * fov, p * fov, data_range, mask=fov),
        **out,
    }


def score_sample_labels(gt_lab: np.ndarray, pred_lab: np.ndarray, classes: dict[int, str],
                        ignore_label: int = 255, fov: np.ndarray | None = None) -> dict[str, float]:
    """``iou_<name>``, ``dice_<name>`` per class and ``mean_iou`` (defined non-background classes) of
    one (Z, Y, X) segmentation.

    With a (Y, X) ``fov`` disk only the voxels inside it are scored: those outside count as
    ``ignore_label``, as ``simaq-train evaluate`` and ``baseline`` score (FBP leaves rim artifacts
    there that any per-voxel method labels, and no object lies there).
    """
    if fov is not None:
        gt_lab = np.where(fov, gt_lab, ignore_label)
    counts = confusion_counts(gt_lab, pred_lab, ignore_label)
    out: dict[str, float] = {}
    fg: list[float] = []
    for c, (iou, dice) in iou_dice(counts, list(classes)).items():
        out[f"iou_{classes[c]}"] = iou
        out[f"dice_{classes[c]}"] = dice
        if c != 0 and not math.isnan(iou):
            fg.append(iou)
    out["mean_iou"] = float(np.mean(fg)) if fg else math.nan
    return out


def _unique_names(preds: list[Prediction]) -> None:
    """Rename later predictions that share a name to ``NAME-2``, ``NAME-3``, … skipping every name
    already in use (given or generated), so no two predictions ever share a name."""
    given = {p.name for p in preds}
    taken: set[str] = set()
    for p in preds:
        if p.name in taken:
            k = 2
            while f"{p.name}-{k}" in taken or f"{p.name}-{k}" in given:
                k += 1
            p.name = f"{p.name}-{k}"
        taken.add(p.name)


def score(
    gt_dir: Path,
    pred_paths: list[Path],
    *,
    only: str = "auto",
    fit: str = "affine",
    span_bin_deg: float = 10.0,
    fov_margin: float = DEFAULT_FOV_MARGIN,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score every prediction in ``pred_paths`` against the dataset at ``gt_dir``.

    ``fit`` ("affine" or "none") is how reconstructions are matched to the phantom before the
    metrics (see :func:`score_sample_recon`). Returns per-sample rows, per-prediction summaries (overall, by cell count, by ``span_bin_deg``
    tilt-span bins) and, with several predictions, a paired comparison against the first.
    """
    if not pred_paths:
        raise BadInput("--pred", "give at least one prediction")
    if fit not in ("affine", "none"):
        raise BadInput("--fit", f"must be affine or none, got {fit!r}")
    if not (span_bin_deg > 0 and math.isfinite(span_bin_deg)):
        raise BadInput("--span-bin", f"must be a finite number of degrees > 0, got {span_bin_deg}")
    gt = open_ground_truth(gt_dir)
    if not 0 <= fov_margin < gt.radius:
        raise BadInput("--fov-margin", f"must be in [0, {gt.radius:g}), got {fov_margin}")
    gt = dataclasses.replace(gt, radius=gt.radius - fov_margin)
    fov = gt.fov()
    if not fov.any():
        raise BadInput("--fov-margin", f"{fov_margin:g} leaves no voxel in the field of view (its radius would "
                       f"be {gt.radius:g} voxels); use a smaller margin")
    preds = [open_prediction(p, gt, only) for p in pred_paths]
    _unique_names(preds)
    rows: list[dict[str, Any]] = []
    total = sum(len(p.indices) for p in preds)
    done = 0
    t0 = time.perf_counter()
    for pred in preds:
        odd: dict[str, list[int]] = {"constant": [], "unknown": [], "unfitted": [], "uniform": []}
        for i in pred.indices:
            rows.extend(_score_sample(gt, pred, i, fov, fit, odd))
            done += 1
            if progress is not None:
                progress(done, total)
        _warn_odd(pred.name, odd, gt)
    logger.info("scored %d sample(s) in %.1f s", done, time.perf_counter() - t0)
    payload = _payload(gt, preds, rows, span_bin_deg, fit, fov_margin)
    return ScoreResult(payload=payload, rows=rows, examples=_examples(gt, preds, rows))


def _samples_text(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:8])) + (", …" if len(indices) > 8 else "")


def _warn_odd(name: str, odd: dict[str, list[int]], gt: GroundTruth) -> None:
    """Warn about what scores but is probably not what the user meant."""
    if odd["constant"]:  # e.g. a Zarr sample never written: it reads as the array's fill value
        logger.warning("%s: %d sample(s) hold a constant reconstruction (%s), scored as no structure: "
                       "unwritten?", name, len(odd["constant"]), _samples_text(odd["constant"]))
    if odd["uniform"]:  # e.g. a Zarr sample never written: it reads as the fill value, all background
        logger.warning("%s: %d segmentation(s) hold one id in every voxel though the ground truth has "
                       "foreground (%s), scored as such: unwritten?", name, len(odd["uniform"]),
                       _samples_text(odd["uniform"]))
    if odd["unfitted"]:  # e.g. SIRT/CGLS swamped by the ice slab: the fit reduces them to their mean
        logger.warning("%s: %d sample(s) are uncorrelated or anti-correlated with the phantom in the field of "
                       "view (%s): the affine fit's scale is 0, so they score as a constant volume would, no "
                       "structure", name, len(odd["unfitted"]), _samples_text(odd["unfitted"]))
    if odd["unknown"]:  # e.g. 8-bit reconstructions in a flat folder, taken for segmentations
        logger.warning("%s: %d segmentation(s) hold ids beyond the dataset's classes 0..%d (and %d, "
                       "unlabelled) (%s), scored as wrong classes: 8-bit reconstructions? pass --only recon",
                       name, len(odd["unknown"]), max(gt.classes), gt.ignore_label, _samples_text(odd["unknown"]))


def _score_sample(gt: GroundTruth, pred: Prediction, i: int, fov: np.ndarray,
                  fit: str, odd: dict[str, list[int]] | None = None) -> list[dict[str, Any]]:
    """The row of sample ``i`` — or, with three acquisition axes, one row per axis ``k`` (column
    ``axis``, its own ``span_deg``): recon ``k`` and labels ``k`` are scored in the frame of its tilt
    axis, where the field of view is the cylinder about that axis
    (:mod:`simaq_factory.acquisition.axes`)."""
    from simaq_factory.acquisition.axes import frame_axes

    vols = {kind: pred.read[kind](i) for kind in pred.kinds}
    gt_lab = gt.read("labels", i) if "labels" in vols else None
    if odd is not None and "recon" in vols and float(np.min(vols["recon"])) == float(np.max(vols["recon"])):
        odd["constant"].append(i)
    if odd is not None and "labels" in vols:
        lab = vols["labels"]
        if np.any((lab > max(gt.classes)) & (lab != gt.ignore_label)) or np.any(lab < 0):
            odd["unknown"].append(i)
        # e.g. a Zarr sample never written: it reads as the fill value, all background
        if int(np.min(lab)) == int(np.max(lab)) and np.any((gt_lab != 0) & (gt_lab != gt.ignore_label)):
            odd["uniform"].append(i)
    multi = gt.n_axes > 1
    rows = []
    for k in range(gt.n_axes):
        row: dict[str, Any] = {"pred": pred.name, "index": i, **({"axis": k} if multi else {}),
                               "n_cells": gt.n_cells[i], "span_deg": gt.spans_by_axis[i][k]}
        perm = frame_axes(k)
        if "recon" in vols:
            vol = vols["recon"][k] if multi else vols["recon"]
            try:
                row.update(score_sample_recon(np.transpose(gt.read("phantom", i), perm),
                                              np.transpose(vol, perm), fov, fit))
            except ValueError as err:
                raise BadInput(_where(pred, "recon", i, k, multi), str(err)) from None
        if gt_lab is not None:
            lab = vols["labels"][k] if multi else vols["labels"]
            try:
                row.update(score_sample_labels(np.transpose(gt_lab, perm), np.transpose(lab, perm),
                                               gt.classes, gt.ignore_label, fov))
            except ValueError as err:
                hint = ("; the files were taken for segmentations because they hold integers: for "
                        "reconstructions pass --only recon or put them in a recon/ sub-folder"
                        if pred.labels_by_dtype else "")
                raise BadInput(_where(pred, "labels", i, k, multi), f"{err}{hint}") from None
        rows.append(row)
    # the affine fit reduced it to its mean, though it is not constant (a constant is said above)
    if odd is not None and i not in odd["constant"] and any(r.get("fit_scale") == 0.0 for r in rows):
        odd["unfitted"].append(i)
    return rows


def _where(pred: Prediction, kind: str, i: int, k: int, multi: bool) -> str:
    """What a value error of sample ``i`` names: the file of a folder prediction (its axis with three
    axes), else the prediction, kind and sample."""
    axis = f"axis {k}" if multi else ""
    path = pred.files.get(kind, {}).get(i)
    if path is not None:
        return f"{path} ({axis})" if axis else str(path)
    return f"{pred.path} ({kind}, sample {i}{', ' + axis if axis else ''})"


def _metrics_of(pred: Prediction, gt: GroundTruth) -> list[str]:
    out: list[str] = []
    if "recon" in pred.kinds:
        out += RECON_METRICS
    if "labels" in pred.kinds:
        out += ["mean_iou"] + [f"iou_{n}" for n in gt.classes.values()]
        out += [f"dice_{n}" for n in gt.classes.values()]
    return out


def _payload(gt: GroundTruth, preds: list[Prediction], rows: list[dict[str, Any]],
             span_bin_deg: float, fit: str, fov_margin: float) -> dict[str, Any]:
    predictions: dict[str, Any] = {}
    for p in preds:
        mine = [r for r in rows if r["pred"] == p.name]
        predictions[p.name] = {
            "path": str(p.path), "kinds": p.kinds, "attrs": p.attrs, "n_scored": len(mine),
            "metrics": _metrics_of(p, gt), **group_stats(mine, _metrics_of(p, gt), span_bin_deg),
        }
    shared = [m for m in _metrics_of(preds[0], gt) if all(m in _metrics_of(p, gt) for p in preds)]
    return {
        "format": SCORES_FORMAT,
        "version": SCORES_VERSION,
        "ground_truth": {"path": str(gt.out), "recipe_id": gt.recipe_id, "n_samples": gt.n_samples,
                         "shape_zyx": list(gt.shape), "classes": {str(k): v for k, v in gt.classes.items()},
                         "ignore_label": gt.ignore_label, "tilt_axes": list(range(gt.n_axes)),
                         "fov_radius": gt.radius},
        "conventions": {**CONVENTIONS, "fit": FIT_DOC[fit], "fov_margin": fov_margin,
                        "span_bin_deg": span_bin_deg,
                        **({"axes": AXES_DOC} if gt.n_axes > 1 else {})},
        "predictions": predictions,
        "comparison": compare(rows, [p.name for p in preds], shared) if len(preds) > 1 else None,
        "samples": rows,
    }


def _examples(gt: GroundTruth, preds: list[Prediction], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Central z-slices of one sample (median SSIM, else median mean IoU, of the first prediction)."""
    first = [r for r in rows if r["pred"] == preds[0].name]
    key = "ssim" if "ssim" in first[0] else "mean_iou"
    vals = [(r.get(key, math.nan), r["index"]) for r in first]
    finite = sorted((v, i) for v, i in vals if math.isfinite(v))
    index = finite[len(finite) // 2][1] if finite else first[0]["index"]
    axis = next((int(r.get("axis", 0)) for r in first if r["index"] == index), 0)
    z = gt.shape[0] // 2
    ex: dict[str, Any] = {"index": index, "axis": axis, "z": z, "key": key,
                          "phantom": gt.read("phantom", (index, z)),
                          "labels": gt.read("labels", (index, z)), "preds": {}}
    fits = {r["pred"]: (r.get("fit_scale"), r.get("fit_offset")) for r in rows
            if r["index"] == index and r.get("axis", 0) == axis}
    pick = (axis, z) if gt.n_axes > 1 else (z,)
    for p in preds:
        if index in p.indices:
            ex["preds"][p.name] = {k: np.asarray(p.read[k](index)[pick]) for k in p.kinds}
            a, b = fits.get(p.name, (None, None))
            if "recon" in p.kinds and a is not None:
                ex["preds"][p.name]["recon"] = a * ex["preds"][p.name]["recon"].astype(np.float64) + b
    return ex


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: The files of a report (what :func:`write_outputs` writes) and its temporary files.
REPORT_FILES = ("scores.json", "samples.csv", "report.html")


def _is_report_file(name: str) -> bool:
    return (name in REPORT_FILES or (name.startswith("fig-") and name.endswith(".png"))
            or any(name.startswith(f".{f}.tmp-") for f in REPORT_FILES))


def check_report_dir(report_dir: Path, overwrite: bool = False) -> None:
    """Before scoring: :class:`BadInput` unless ``report_dir`` is absent or empty, or holds only a
    report of ``score`` (:data:`REPORT_FILES`, ``fig-*.png``) and ``overwrite`` is set, or only what an
    interrupted ``score`` left (no ``scores.json``, written last): that is completed by running the
    command again. An earlier report is never replaced silently, and other files never at all (as
    ``simaq-train predict -o``)."""
    if not report_dir.is_dir():
        return
    entries = sorted((p.name for p in report_dir.iterdir()), key=lambda n: (n.startswith("."), n))
    if not entries:
        return
    foreign = [name for name in entries if not _is_report_file(name)]
    if foreign:
        raise BadInput(str(report_dir), f"exists and holds files other than a score report ({foreign[0]}"
                       f"{', …' if len(foreign) > 1 else ''}); choose another -o")
    if not overwrite and "scores.json" in entries:
        raise BadInput(str(report_dir), "already holds a score report; use --overwrite to replace it, "
                       "or choose another -o")


def write_outputs(result: ScoreResult, report_dir: Path) -> dict[str, Path]:
    """Write ``scores.json`` (NaN -> null, ±inf -> "inf"/"-inf"), ``samples.csv`` and ``report.html``."""
    from simaq_factory.score.report import render_report

    if report_dir.exists() and not report_dir.is_dir():
        raise BadInput(str(report_dir), "report path exists and is not a directory")
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": report_dir / "scores.json", "csv": report_dir / "samples.csv",
             "html": report_dir / "report.html"}
    columns: list[str] = []
    for r in result.rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for r in result.rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    # everything is rendered before the first file is replaced: a report that fails to render
    # leaves an earlier report in the folder whole (was: its samples.csv and figures replaced)
    page, figures = render_report(result)
    # an earlier report's scores.json goes before the first file of this one is written: a run
    # stopped mid-way (Ctrl-C, kill) leaves a folder without it, which reads as interrupted and
    # which the same command completes (was: the old scores.json beside this run's figures, CSV
    # and HTML, a mixed report that looked whole and was then refused without --overwrite)
    paths["json"].unlink(missing_ok=True)
    for name, data in figures.items():
        (report_dir / name).write_bytes(data)
    for old in report_dir.glob("fig-*.png"):  # an earlier report's figures this one does not draw
        if old.name not in figures:
            old.unlink()
    _write_atomic(paths["csv"], buf.getvalue())
    _write_atomic(paths["html"], page)
    # scores.json last, renamed into place whole: a report folder that has it has the rest of this run
    _write_atomic(paths["json"], json.dumps(_json_safe(result.payload), indent=1, allow_nan=False) + "\n")
    for stale in report_dir.glob(".*.tmp-*"):  # an interrupted run's temporary files
        if _is_report_file(stale.name):
            stale.unlink(missing_ok=True)
    return paths
