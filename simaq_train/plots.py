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


def _val_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    """What a validation line scored: its datasets (with their hashes), sample cap and axes. Lines
    from runs before session 18 carry none of it and form one group."""
    ds = rec.get("datasets")
    ds_key = tuple(sorted(ds.items())) if isinstance(ds, dict) else tuple(ds or ())
    axes = rec.get("axes")
    return ds_key, rec.get("max_samples"), tuple(axes) if isinstance(axes, list) else axes


def _val_labels(keys: list[tuple[Any, ...]]) -> list[str]:
    """One legend label per validation set, naming only what tells the sets apart."""
    if len(keys) == 1:
        return ["validation (mean over volumes)"]
    labels = []
    for ds, cap, axes in keys:
        parts = []
        if len({k[0] for k in keys}) > 1:
            parts.append(", ".join(Path(str(d[0] if isinstance(d, tuple) else d)).name for d in ds) or "?")
        if len({k[1] for k in keys}) > 1:
            parts.append(f"max {cap} samples" if cap is not None else "all samples")
        if len({k[2] for k in keys}) > 1:
            parts.append("axes " + (",".join(map(str, axes)) if isinstance(axes, tuple) else str(axes)))
        labels.append("val: " + "; ".join(parts))
    if len(set(labels)) < len(labels):  # same folder names, other contents (a dataset rebuilt)
        labels = [f"{label} (set {i + 1})" for i, label in enumerate(labels)]
    return labels


def plot_metrics(metrics: Path, out: Path) -> Path | None:
    """Loss and mean foreground IoU against optimiser step (train and validation).

    Validation lines that scored different sets (``data.val``, ``data.val_max_samples`` or
    ``data.axes`` changed at a resume) are separate curves: their values are not comparable. Each
    resume is a dotted vertical line."""
    if not metrics.is_file():
        return None
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig = metrics_figure(recs)
    if fig is None:
        return None
    fig.savefig(out, dpi=100)
    _plt().close(fig)
    return out


def metrics_figure(recs: list[dict[str, Any]]) -> Any:
    """The figure ``plot_metrics`` saves, from metrics.jsonl's records (None: nothing to draw)."""
    train = [r for r in recs if r["kind"] == "train"]
    val = [r for r in recs if r["kind"] == "val"]
    resumes = [r["step"] for r in recs if r["kind"] == "resume"]
    if not train and not val:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax1.set_xlabel("optimiser step")
    ax1.set_ylabel("Dice-Focal loss")
    ax1.set_yscale("log")
    ax2.plot([r["step"] for r in train], [r["mean_iou"] for r in train], label="train (batches)")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in val:
        groups.setdefault(_val_key(r), []).append(r)
    for label, rs in zip(_val_labels(list(groups)), groups.values()):
        # mean over volumes, as evaluate's headline (older runs logged the pooled "mean_iou")
        ax2.plot([r["step"] for r in rs], [r.get("mean_iou_foreground", r.get("mean_iou")) for r in rs], "o-",
                 label=label)
    for i, step in enumerate(resumes):
        for ax in (ax1, ax2):
            ax.axvline(step, color="grey", linestyle=":", linewidth=1, label="resumed" if i == 0 and ax is ax2 else None)
    ax2.set_xlabel("optimiser step")
    ax2.set_ylabel("mean IoU (foreground classes)")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize="small")
    fig.tight_layout()
    return fig


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
