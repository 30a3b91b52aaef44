"""Evaluation on a simaq-factory dataset: IoU and Dice per class and per sample (reference §6.6),
summaries per class and per cell count, a Figure-5-style plot; and an intensity-threshold baseline.

IoU is computed per volume over every slice of each acquisition (``axes="all"``, a row per sample
and axis; ``"first"``: acquisition 0 only) inside the field-of-view cylinder, skipping ignored
voxels; it is undefined (``null``), not 0, where prediction and truth are empty.
Cell counts come from ``OUT/provenance/shard-*.json`` → ``sample_records[k]["n_cells"]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from itertools import permutations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simaq_factory.errors import BadInput, optional
from simaq_train.data.normalize import fov_mask
from simaq_train.data.build import check_fov
from simaq_train.data.sources import FactorySource, infer_n_classes
from simaq_train.metrics import confusion, headline_scores, iou_dice, mean_defined

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
Predictor = Callable[[np.ndarray], np.ndarray]


def cell_counts(dataset: str | Path) -> dict[int, int]:
    """Sample index → number of cells, from the provenance records (missing ones are skipped)."""
    out: dict[int, int] = {}
    for f in sorted((Path(dataset) / "provenance").glob("shard-*.json")):
        try:
            for rec in json.loads(f.read_text()).get("sample_records", []):
                if "index" in rec and "n_cells" in rec:
                    out[int(rec["index"])] = int(rec["n_cells"])
        except (OSError, ValueError) as err:
            log.warning("%s: unreadable provenance (%s)", f, err)
    return out


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "q25": None, "q75": None}
    a = np.asarray(values)
    return {"n": len(values), "mean": float(a.mean()), "median": float(np.median(a)),
            "q25": float(np.quantile(a, 0.25)), "q75": float(np.quantile(a, 0.75))}


def sample_confusions(dataset: str | Path, predictor: Predictor, *, n_classes: int, fov_margin: float,
                      max_samples: int = 0, n_pred: int | None = None, raw: bool = False,
                      axes: str = "all", fov_key: str = "data.fov_margin",
                      progress: Callable[[int, int], None] | None = None) -> tuple[list[np.ndarray], FactorySource]:
    """Confusion matrices (truth × prediction, FOV only) of ``predictor``, one per volume of the
    source: per (sample, acquisition) with ``axes="all"`` (every acquisition axis of a three-axis
    dataset, each in its own frame), per sample on acquisition 0 with ``"first"``; ``src.locate(v)``
    gives volume v's (sample, acquisition). The predictor gets the normalised reconstruction, or
    with ``raw`` the stored one. A ``fov_margin`` that leaves no field of view is bad input naming
    ``fov_key`` (the checkpoint's config key, or the baseline's flag)."""
    if axes not in ("all", "first"):
        raise BadInput("--axes", f"must be 'all' or 'first', got {axes!r}")
    src = FactorySource(dataset, n_classes=n_classes, fov_margin=fov_margin, axes=axes,
                        max_samples=max_samples)
    check_fov(src, fov_key, fov_margin)
    cms = []
    for v in range(len(src)):
        image, labels = src.load_raw(v) if raw else src.load(v)
        pred = predictor(image)
        mask = fov_mask(labels.shape[1:], fov_margin)
        cm = confusion(pred, labels, max(n_classes, n_pred or 0), mask=mask)
        cms.append(cm[:n_classes])
        if progress:
            progress(v + 1, len(src))
    return cms, src


def summarise(dataset: str | Path, cms: list[np.ndarray], card: dict[str, Any],
              src: FactorySource | None = None) -> dict[str, Any]:
    """Report from per-volume square confusion matrices: per row, per class (by cell count), pooled.

    A row is a sample, or with a three-axis ``src`` (``axes="all"``) one acquisition of a sample:
    its ``index`` is the sample, ``axis`` the volume axis it was tilted about."""
    n_classes = cms[0].shape[0] if cms else 0
    lm = card.get("label_map", {})
    names = [str(lm.get(str(c), f"class{c}")) for c in range(n_classes)]
    cells = cell_counts(dataset)
    fg = list(range(1, n_classes))
    per_sample = []
    multi = src is not None and len(src.acqs) > 1
    for v, cm in enumerate(cms):
        iou, dice = iou_dice(cm)
        s, a = src.locate(v) if src is not None else (v, 0)
        row = {"index": s, "n_cells": cells.get(s), "iou": dict(zip(names, iou)),
               "dice": dict(zip(names, dice)), "mean_iou": mean_defined(iou, fg)}
        if multi:
            row["axis"] = int(src.tilt_axes[a])  # type: ignore[union-attr]
        per_sample.append(row)
    by_class = {}
    for name in names:
        groups: dict[str, Any] = {"all": _summary([s["iou"][name] for s in per_sample if s["iou"][name] is not None])}
        for n in sorted({s["n_cells"] for s in per_sample if s["n_cells"] is not None}):
            groups[f"cells={n}"] = _summary([s["iou"][name] for s in per_sample
                                             if s["n_cells"] == n and s["iou"][name] is not None])
        groups["dice_all"] = _summary([s["dice"][name] for s in per_sample if s["dice"][name] is not None])
        by_class[name] = groups
    return {
        "dataset": str(dataset), "samples": len({r["index"] for r in per_sample}),
        "rows": len(per_sample),
        "rows_are": ("acquisitions (sample, axis): every acquisition axis in its own frame" if multi
                     else "samples (acquisition 0)"),
        "class_names": names,
        "foreground_classes": [names[c] for c in fg],
        **headline_scores(cms, names),
        "per_class": by_class, "per_sample": per_sample,
    }


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    from simaq_train.plots import plot_iou_by_cells

    out_dir.mkdir(parents=True, exist_ok=True)
    js, png = out_dir / f"{stem}.json", out_dir / f"{stem}_iou.png"
    # both written under temporary names and renamed, the JSON last: a JSON in the folder is whole,
    # and the plot next to it is the one of the same run (or of a newer one that was interrupted)
    tag = f"tmp-{os.getpid()}"
    tmp_js, tmp_png = out_dir / f".{stem}.{tag}.json", out_dir / f".{stem}_iou.{tag}.png"
    try:
        tmp_js.write_text(json.dumps(report, indent=1))
        plot_iou_by_cells(report["per_sample"], report["class_names"][1:], tmp_png)
        os.replace(tmp_png, png)
        os.replace(tmp_js, js)
    finally:
        tmp_js.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)
    return js, png


def _in_fov(image: np.ndarray, fov_margin: float) -> np.ndarray:
    """Voxels of a (Z, H, W) volume inside the field-of-view cylinder, as float64."""
    return np.asarray(image[np.broadcast_to(fov_mask(image.shape[1:], fov_margin), image.shape)], np.float64)


def otsu_predictor(n_levels: int = 4, fov_margin: float = 5.0) -> Predictor:
    """Multi-Otsu thresholds on the normalised reconstruction inside the FOV → intensity class ids
    0 (darkest) … n_levels − 1 (brightest)."""
    threshold_multiotsu = optional("skimage.filters", "simaq-train baseline").threshold_multiotsu

    def predict(image: np.ndarray) -> np.ndarray:
        thr = threshold_multiotsu(_in_fov(image, fov_margin), classes=n_levels)
        return np.digitize(image, thr).astype(np.uint8)

    return predict


def otsu_two_stage_predictor(fov_margin: float = 5.0) -> Predictor:
    """Otsu's threshold splits the FOV into background (level 0) and cells; a 3-class multi-Otsu
    inside the cells gives levels 1–3 (dark → bright)."""
    filters = optional("skimage.filters", "simaq-train baseline")
    threshold_multiotsu, threshold_otsu = filters.threshold_multiotsu, filters.threshold_otsu

    def predict(image: np.ndarray) -> np.ndarray:
        mask = np.broadcast_to(fov_mask(image.shape[1:], fov_margin), image.shape)
        t0 = threshold_otsu(_in_fov(image, fov_margin))
        cells = mask & (image > t0)
        out = np.zeros(image.shape, np.uint8)
        if cells.sum() > 3:
            thr = threshold_multiotsu(image[cells], classes=3)
            out[cells] = 1 + np.digitize(image[cells], thr).astype(np.uint8)
        return out

    return predict


PHYSICAL_ORDER = (0, 2, 1, 3)  # dark → bright: background < vacuole < cell < lipid droplet (LAC order)


def otsu_baseline(dataset: str | Path, *, n_classes: int | None = None, fov_margin: float = 5.0,
                  max_samples: int = 0, search_order: bool = True, axes: str = "all",
                  progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Intensity-threshold baselines on the normalised reconstructions (FOV only; every acquisition
    of a three-axis dataset with ``axes="all"``, acquisition 0 with ``"first"``).

    Two methods produce four intensity levels 0 (darkest) … 3 (brightest): 4-class multi-Otsu, and
    Otsu (cells vs background) followed by 3-class multi-Otsu inside the cells. Each runs on the
    histogram of the normalised reconstruction and, as ``raw_*`` variants, on that of the stored
    one: rank normalisation makes every histogram the same standard normal, so Otsu's thresholds
    there are nearly fixed quantiles, while the raw histogram keeps its modes. The normalisation is
    monotone, so a raw threshold is also a threshold on the normalised reconstruction (the same
    partition); these are all "Otsu thresholds on the normalised reconstruction". An *order* maps
    level k to class ``order[k]``; the physical order is :data:`PHYSICAL_ORDER` (dark → bright:
    background, vacuole, cell, lipid droplet, the LAC order). With ``search_order`` every one of
    the 24 orders of all four variants is scored and the report is that of the best (variant, order) by
    mean foreground IoU, recorded as ``best_variant`` / ``best_order``. That choice is made on the
    evaluated data itself, so it is optimistic for the baseline (an oracle choice): a model that
    beats it beats any fixed threshold-to-class mapping by at least as much. Without
    ``search_order`` only the physical order is tried (the variant is still the best of the four).
    ``physical_order`` holds the best variant in the physical order; ``variants`` the top ten.
    The variant is always chosen on the evaluated data (``variant_chosen_on_evaluated_data``).

    ``n_classes`` (default: the dataset's, at least 4) classes are scored; levels map to classes
    0–3 only, so further classes (e.g. 4, nucleus) are never predicted and score IoU 0 where present.
    ``progress(text, fraction)`` is told each volume thresholded (every variant reads the dataset).
    """
    if not (math.isfinite(fov_margin) and fov_margin >= 0):  # NaN passed `< 0` and masked everything
        raise BadInput("--fov-margin", f"must be a finite number >= 0, got {fov_margin}")
    if n_classes is None:
        n_classes = max(len(PHYSICAL_ORDER), infer_n_classes(dataset))
    methods = {"multiotsu4": otsu_predictor(4, fov_margin), "otsu_then_multiotsu3": otsu_two_stage_predictor(fov_margin)}
    predictors = {**{(k, False): f for k, f in methods.items()}, **{(f"raw_{k}", True): f for k, f in methods.items()}}
    orders = list(permutations(range(4))) if search_order else [PHYSICAL_ORDER]
    best: tuple[float, str, tuple[int, ...], dict[str, Any]] | None = None
    variants = []
    card: dict[str, Any] = {}
    for k, ((name, raw), pred) in enumerate(predictors.items()):
        def told(i: int, n: int, k: int = k, name: str = name) -> None:
            if progress is not None:
                progress(f"{name} ({k + 1}/{len(predictors)}): volume {i}/{n}", (k + i / n) / len(predictors))

        cms_k, src = sample_confusions(dataset, pred, n_classes=n_classes, fov_margin=fov_margin,
                                       max_samples=max_samples, n_pred=4, raw=raw, axes=axes,
                                       fov_key="--fov-margin", progress=told)
        card = src.card

        def mapped(order: tuple[int, ...]) -> list[np.ndarray]:
            out = []
            for cm in cms_k:
                m = np.zeros((n_classes, n_classes), np.int64)
                for k, c in enumerate(order):
                    if c < n_classes:
                        m[:, c] += cm[:, k]
                out.append(m)
            return out

        for order in orders:
            rep = summarise(dataset, mapped(order), card, src)
            score = rep["mean_iou_foreground"] or 0.0
            variants.append({"variant": name, "order": list(order), "physical": order == PHYSICAL_ORDER,
                             "mean_iou_foreground": rep["mean_iou_foreground"],
                             "per_class_mean_iou": {c: rep["per_class"][c]["all"]["mean"] for c in rep["class_names"]},
                             "pooled_iou": rep["pooled"]["iou"]})
            if best is None or score > best[0]:
                best = (score, name, order, rep)
    assert best is not None
    _, name, order, report = best
    names = report["class_names"]
    report["best_variant"] = name
    report["best_order"] = list(order)
    report["best_order_names"] = [names[c] if c < len(names) else f"class{c}" for c in order]
    report["order_chosen_on_evaluated_data"] = search_order
    report["variant_chosen_on_evaluated_data"] = True
    report["order_search"] = "all 24 orders" if search_order else "physical order only"
    report["note"] = (
        "best_order maps intensity level k (0 = darkest) to class best_order[k]; raw_* variants take "
        "Otsu's thresholds from the stored reconstruction's histogram (the same partition as thresholds "
        "on the normalised one, which is monotone in it). Variant and order are "
        "chosen by mean foreground IoU on the evaluated data itself, which is optimistic for the "
        "baseline (an oracle choice); a margin over it is therefore conservative. "
        "physical_order is the best variant with the LAC order background < vacuole < cell < lipid droplet.")
    physical = [v for v in variants if v["physical"]]
    report["physical_order"] = max(physical, key=lambda v: v["mean_iou_foreground"] or 0.0)
    report["variants"] = sorted(variants, key=lambda v: -(v["mean_iou_foreground"] or 0.0))[:10]
    return report


def evaluate_checkpoint(ckpt: str | Path, dataset: str | Path, *, use_ema: bool = True, batch_size: int = 8,
                        max_samples: int = 0, post: bool = False, device: str | torch.device = "auto",
                        axes: str = "all", progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score ``ckpt`` on ``dataset`` as ``simaq-train evaluate`` does (its report, not yet written).

    ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` (an unusable
    one is a ``BadInput`` naming ``--device``, the flag it comes from); ``batch_size`` >= 1 is
    checked before the checkpoint is read (a ``ValueError`` naming it)."""
    from simaq_train.engine.parts import resolve_device
    from simaq_train.inference import load_model, segment

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BadInput("batch_size", f"must be an int >= 1, got {batch_size!r}")  # --batch-size: click checks it
    if not (Path(dataset) / "dataset.zarr").is_dir():
        raise BadInput(str(dataset), "not a simaq-factory dataset (no dataset.zarr)")
    dev = resolve_device(device, "--device")
    model, cfg = load_model(ckpt, use_ema, dev)

    def predict(image: np.ndarray) -> np.ndarray:
        return segment(model, cfg, image, batch_size=batch_size, device=dev, post=post)

    cms, src = sample_confusions(dataset, predict, n_classes=cfg.model.out_channels,
                                 fov_margin=cfg.data.fov_margin, max_samples=max_samples, axes=axes,
                                 progress=progress)
    report = summarise(dataset, cms, src.card, src)
    report["checkpoint"] = str(ckpt)
    report["weights"] = "ema" if use_ema else "model"
    report["postprocess"] = post
    return report
