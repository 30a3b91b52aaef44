"""Summaries of per-sample scores: statistics, breakdowns by cell count and tilt span, comparisons.

A *row* is one (prediction, sample) pair: ``{"pred", "index", "n_cells", "span_deg", <metric>: float}``
with NaN for undefined metrics (an empty class, a zero data range). For a dataset with three
acquisition axes a row is one (prediction, sample, axis) and carries ``"axis"`` too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["compare", "group_stats", "higher_is_better", "span_bin", "stats"]

ID_COLUMNS = ("pred", "index", "axis", "n_cells", "span_deg")


#: Scores equal within this relative tolerance are ties (float rounding of equal volumes differs
#: by ~1e-10 between formats or summation orders).
TIE_RTOL = 1e-7


def _close(a: float, b: float) -> bool:
    if a == b:  # equal infinities (two perfect PSNRs) too
        return True
    if math.isinf(a) or math.isinf(b):
        return False
    return abs(a - b) <= TIE_RTOL * max(abs(a), abs(b), 1.0)


def _percentile(sorted_vals: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile of sorted non-NaN values that may hold ±inf: between a
    finite value and an infinite one it is the infinite one (numpy's interpolation gives NaN)."""
    pos = q / 100.0 * (len(sorted_vals) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    a, b = float(sorted_vals[lo]), float(sorted_vals[hi])
    if lo == hi or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        return b if math.isinf(b) else a
    return a + (b - a) * (pos - lo)


def higher_is_better(metric: str) -> bool:
    """NRMSE is an error (lower is better); PSNR, SSIM, IoU and Dice are similarities."""
    return metric != "nrmse"


def stats(values: Iterable[float]) -> dict[str, Any]:
    """n, mean, std, median, quartiles, min, max over the defined (non-NaN) values (None when there
    are none).

    ``n_undefined`` counts NaN values (e.g. a class absent from both volumes). ``inf`` (a perfect
    PSNR) counts in ``n`` and in the order statistics (a prediction perfect on most samples has an
    infinite median, and ranks so), and ``n_infinite`` says how many there are; the mean is then
    infinite and the std undefined (None).
    """
    arr = np.asarray(list(values), dtype=np.float64)
    defined = np.sort(arr[~np.isnan(arr)])
    n_inf = int(np.isinf(defined).sum())
    out: dict[str, Any] = {"n": int(defined.size), "n_undefined": int(np.isnan(arr).sum()),
                           "n_infinite": n_inf}
    if defined.size == 0:
        out.update(mean=None, std=None, median=None, q1=None, q3=None, min=None, max=None)
        return out
    mean = float(defined.mean()) if not (np.isposinf(defined).any() and np.isneginf(defined).any()) else None
    out.update(mean=mean, std=float(defined.std()) if n_inf == 0 else None,
               median=_percentile(defined, 50), q1=_percentile(defined, 25), q3=_percentile(defined, 75),
               min=float(defined[0]), max=float(defined[-1]))
    return out


def span_bin_edges(span_deg: float, width: float) -> tuple[float, str]:
    """(lower edge, label) of the ``width``-degree bin holding ``span_deg``; bins are centred on
    multiples of ``width`` (so a nominal 100° span, stored as 99.9999°, falls in ``"95-105"``)."""
    k = math.floor(span_deg / width + 0.5)
    lower = (k - 0.5) * width
    return lower, f"{lower:g}-{(k + 0.5) * width:g}"


def span_bin(span_deg: float, width: float) -> str:
    """Label of the ``width``-degree bin holding ``span_deg`` (see :func:`span_bin_edges`)."""
    return span_bin_edges(span_deg, width)[1]


def group_stats(rows: list[dict[str, Any]], metrics: list[str], span_width: float) -> dict[str, Any]:
    """Summary of one prediction's rows: ``overall``, ``by_n_cells`` and ``by_span_deg``."""

    def summarise(sub: list[dict[str, Any]]) -> dict[str, Any]:
        return {"n_samples": len(sub), **{m: stats(r[m] for r in sub) for m in metrics}}

    by_cells: dict[int, list[dict[str, Any]]] = {}
    by_span: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_cells.setdefault(int(r["n_cells"]), []).append(r)
        lower, label = span_bin_edges(float(r["span_deg"]), span_width)
        by_span.setdefault((lower, label), []).append(r)
    return {
        "overall": summarise(rows),
        "by_n_cells": {str(k): summarise(v) for k, v in sorted(by_cells.items())},
        "by_span_deg": {label: summarise(v) for (_, label), v in sorted(by_span.items())},
    }


def compare(rows: list[dict[str, Any]], names: list[str], metrics: list[str]) -> dict[str, Any]:
    """Paired comparison of every prediction with the first (the reference), per metric.

    For each metric: the prediction with the best median over the samples that every prediction
    covers (``n_common``; predictions of different sample subsets are ranked on their common part
    only), the first in the given order among those within rounding (:data:`TIE_RTOL`) of it;
    and per other prediction the mean and median of the paired difference (other − reference, over
    samples where both are finite) and the fraction of those samples where it is better (ties,
    equal within rounding, count half).
    """
    ref = names[0]
    table: dict[str, dict[tuple[int, int], dict[str, Any]]] = {n: {} for n in names}
    for r in rows:  # paired by (sample, acquisition axis)
        table[r["pred"]][(int(r["index"]), int(r.get("axis", 0)))] = r
    shared = sorted(set.intersection(*(set(t) for t in table.values()))) if names else []
    out: dict[str, Any] = {"reference": ref, "n_common": len(shared), "metrics": {}}
    for m in metrics:
        sign = 1.0 if higher_is_better(m) else -1.0
        medians: dict[str, float] = {}
        for n in names:
            s = stats(table[n][k].get(m, math.nan) for k in shared)
            if s["median"] is not None:
                medians[n] = s["median"]
        if not medians:
            continue
        top = max(sign * v for v in medians.values())
        entry: dict[str, Any] = {
            "higher_is_better": higher_is_better(m),
            "best": next(n for n in medians if _close(sign * medians[n], top)),
            "median": medians,
            "vs_reference": {},
        }
        for n in names[1:]:
            common = sorted(set(table[n]) & set(table[ref]))
            pairs = np.array([(table[n][i].get(m, math.nan), table[ref][i].get(m, math.nan))
                              for i in common], dtype=np.float64).reshape(-1, 2)
            pairs = pairs[~np.isnan(pairs).any(axis=1)]
            if pairs.size == 0:
                continue
            same = pairs[:, 0] == pairs[:, 1]  # equal infinities (both perfect) included
            with np.errstate(invalid="ignore"):
                diffs = np.where(same, 0.0, pairs[:, 0] - pairs[:, 1])
                tie = same | (np.isfinite(diffs)
                              & (np.abs(diffs) <= TIE_RTOL * np.maximum(np.abs(pairs).max(axis=1), 1.0)))
            better = float(np.mean(np.where(tie, 0.5, np.where(sign * diffs > 0, 1.0, 0.0))))
            ordered = np.sort(diffs)
            mean_diff = float(diffs.mean()) if not (np.isposinf(diffs).any() and np.isneginf(diffs).any()) \
                else math.nan
            entry["vs_reference"][n] = {"n": int(diffs.size), "mean_diff": mean_diff,
                                        "median_diff": _percentile(ordered, 50), "frac_better": better}
        out["metrics"][m] = entry
    return out
