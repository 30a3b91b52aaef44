"""Matplotlib (Agg) figures: training curves and per-class IoU distributions by cell count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(metrics: Path, out: Path) -> Path | None:
    """Loss and mean foreground IoU against optimiser step (train and validation)."""
    if not metrics.is_file():
        return None
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in recs if r["kind"] == "train"]
    val = [r for r in recs if r["kind"] == "val"]
    if not train and not val:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax1.set_xlabel("optimiser step")
    ax1.set_ylabel("Dice-Focal loss")
    ax1.set_yscale("log")
    ax2.plot([r["step"] for r in train], [r["mean_iou"] for r in train], label="train (batches)")
    if val:
        # mean over volumes, as evaluate's headline (older runs logged the pooled "mean_iou")
        ax2.plot([r["step"] for r in val], [r.get("mean_iou_foreground", r.get("mean_iou")) for r in val], "o-",
                 label="validation (mean over volumes)")
    ax2.set_xlabel("optimiser step")
    ax2.set_ylabel("mean IoU (foreground classes)")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_iou_by_cells(per_sample: list[dict[str, Any]], names: list[str], out: Path) -> Path:
    """Box plots of per-sample IoU per class, grouped by the sample's cell count (paper Figure 5)."""
    plt = _plt()
    counts = sorted({s.get("n_cells") for s in per_sample if s.get("n_cells") is not None}) or [None]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        data = [[s["iou"][name] for s in per_sample
                 if s.get("n_cells") == c and s["iou"].get(name) is not None] for c in counts]
        ax.boxplot([d if d else [float("nan")] for d in data])
        ax.set_xticks(range(1, len(counts) + 1), [str(c) for c in counts])
        ax.set_title(name)
        ax.set_xlabel("cells per volume")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("IoU")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
