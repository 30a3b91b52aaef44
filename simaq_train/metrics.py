"""Confusion matrices, IoU and Dice per class (reference §6.6: undefined, not 0, for empty unions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def confusion_tensor(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, n_classes: int,
                     ignore_index: int = 255, mask: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """:func:`confusion` as an int64 tensor on the inputs' device (no host transfer, no sync on a
    GPU: the training meter accumulates it there and copies it once per metrics line)."""
    pt = torch.as_tensor(np.ascontiguousarray(pred) if isinstance(pred, np.ndarray) else pred)
    tt = torch.as_tensor(np.ascontiguousarray(target) if isinstance(target, np.ndarray) else target)
    if pt.shape != tt.shape:
        raise ValueError(f"prediction shape {tuple(pt.shape)} differs from target {tuple(tt.shape)}")
    p = pt.reshape(-1).long()
    t = tt.reshape(-1).to(p.device).long()
    keep = (t != ignore_index) & (t >= 0) & (t < n_classes)
    if mask is not None:
        m = torch.as_tensor(np.array(mask, dtype=bool) if isinstance(mask, np.ndarray) else mask).bool()
        keep &= torch.broadcast_to(m.to(p.device), tt.shape).reshape(-1)
    # integer counts: exact (and order-free) on every device
    idx = torch.where(keep, t * n_classes + p.clamp(0, n_classes - 1), n_classes * n_classes)
    return torch.bincount(idx, minlength=n_classes * n_classes + 1)[:-1].reshape(n_classes, n_classes)


def confusion(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, n_classes: int,
              ignore_index: int = 255, mask: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = target, columns = prediction.

    pred, target: same shape, integer, on any device. ``mask`` broadcasts to it (e.g. an (H, W)
    field of view for a (Z, H, W) volume). Pixels with target ``ignore_index`` (or outside ``mask``)
    are skipped; targets ≥ n_classes (other than ignore) are skipped too. Predictions are class ids
    0 … n_classes − 1 (an argmax); ids outside that range are clamped into it, so callers with
    outside segmentations use ``simaq_factory.score.metrics.confusion_counts``, which counts them as
    misses.
    """
    return confusion_tensor(pred, target, n_classes, ignore_index, mask).cpu().numpy()


def iou_dice(cm: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-class IoU and Dice from a confusion matrix; None where the union is empty."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    ious: list[float | None] = []
    dices: list[float | None] = []
    for c in range(cm.shape[0]):
        union = tp[c] + fp[c] + fn[c]
        ious.append(None if union == 0 else float(tp[c] / union))
        dices.append(None if union == 0 else float(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c])))
    return ious, dices


def mean_defined(values: list[float | None], classes: list[int] | None = None) -> float | None:
    """Mean over the given classes (default all) of the defined values; None if none is."""
    sel = [values[c] for c in (classes if classes is not None else range(len(values)))]
    vals = [v for v in sel if v is not None]
    return float(np.mean(vals)) if vals else None


def headline_scores(cms: list[np.ndarray], names: list[str]) -> dict[str, Any]:
    """What ``evaluate`` headlines, from one confusion matrix per volume: ``mean_iou_foreground``,
    the mean over volumes of each volume's mean foreground IoU (volumes where it is defined), and
    ``pooled``, IoU and Dice per class and their foreground mean of the summed matrix. Used by
    ``evaluate`` and by the validation during ``fit``, so the two report the same statistic."""
    fg = list(range(1, len(names)))
    means = [m for m in (mean_defined(iou_dice(cm)[0], fg) for cm in cms) if m is not None]
    total = np.zeros((len(names), len(names)), np.int64)
    for cm in cms:
        total += cm
    iou, dice = iou_dice(total)
    return {"mean_iou_foreground": float(np.mean(means)) if means else None,
            "pooled": {"iou": dict(zip(names, iou)), "dice": dict(zip(names, dice)),
                       "mean_iou_foreground": mean_defined(iou, fg)}}
