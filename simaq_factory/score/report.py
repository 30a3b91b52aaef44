"""A one-file HTML report of a :class:`~simaq_factory.score.run.ScoreResult`: tables plus PNG plots
(matplotlib, Agg backend) embedded as base64."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from typing import Any

import numpy as np

__all__ = ["render_report"]

_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}
.best{font-weight:bold;background:#e6f4e6}img{max-width:100%}code{background:#f4f4f4}"""


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _values(rows: list[dict[str, Any]], name: str, metric: str, **where: Any) -> list[float]:
    out = []
    for r in rows:
        if r["pred"] != name or any(r[k] != v for k, v in where.items()):
            continue
        v = r.get(metric, math.nan)
        if isinstance(v, float) and math.isfinite(v):
            out.append(v)
    return out


def _title(rows: list[dict[str, Any]], names: list[str], metric: str) -> str:
    """The metric's name, and how many of its values the plot cannot draw (an exact reconstruction's
    infinite PSNR; they take part in the tables' medians)."""
    n_inf = sum(1 for r in rows if r["pred"] in names and isinstance(v := r.get(metric), float) and math.isinf(v))
    return f"{metric}\n({n_inf} infinite, not drawn)" if n_inf else metric


def _color(names: list[str], name: str) -> str:
    return f"C{names.index(name) % 10}"


def _boxes(ax: Any, groups: list[tuple[str, list[list[float]]]], names: list[str],
           colors: list[str]) -> None:
    """Side-by-side box plots: for each (group label, one value list per prediction)."""
    width = 0.8 / max(1, len(names))
    for g, (_, per_pred) in enumerate(groups):
        for k, vals in enumerate(per_pred):
            if not vals:
                continue
            pos = g + (k - (len(names) - 1) / 2) * width
            bp = ax.boxplot([vals], positions=[pos], widths=width * 0.9, patch_artist=True,
                            showfliers=True, flierprops={"markersize": 3})
            for patch in bp["boxes"]:
                patch.set_facecolor(colors[k])
                patch.set_alpha(0.6)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([label for label, _ in groups])
    ax.set_xlim(-0.5, len(groups) - 0.5)


def _legend(fig: Any, names: list[str], colors: list[str]) -> None:
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, alpha=0.6, label=n) for n, c in zip(names, colors)],
               loc="upper right")


def _iou_by_cells(payload: dict[str, Any], rows: list[dict[str, Any]], names: list[str]) -> Any:
    import matplotlib.pyplot as plt

    classes = [c for c in payload["ground_truth"]["classes"].values()
               if any(_values(rows, n, f"iou_{c}") for n in names)]
    if not classes:
        return None
    seg = [n for n in names if "labels" in payload["predictions"][n]["kinds"]]
    colors = [_color(names, n) for n in seg]
    cells = sorted({int(r["n_cells"]) for r in rows})
    fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3.2), squeeze=False)
    for ax, c in zip(axes[0], classes):
        groups = [(str(k), [_values(rows, n, f"iou_{c}", n_cells=k) for n in seg]) for k in cells]
        _boxes(ax, groups, seg, colors)
        ax.set_title(c.replace("_", " "))
        ax.set_xlabel("cells per volume")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("IoU")
    _legend(fig, seg, colors)
    return fig


def _vs_span(rows: list[dict[str, Any]], names: list[str], metrics: list[str]) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for k, n in enumerate(names):
            pts = [(r["span_deg"], r.get(m, math.nan)) for r in rows if r["pred"] == n]
            pts = [(s, v) for s, v in pts if isinstance(v, float) and math.isfinite(v)]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=14, color=_color(names, n), alpha=0.7, label=n)
        ax.set_xlabel("tilt span (deg)")
        ax.set_title(_title(rows, names, m))
    axes[0][-1].legend(fontsize=8)
    return fig


def _distributions(rows: list[dict[str, Any]], names: list[str], metrics: list[str]) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        have = [n for n in names if _values(rows, n, m)]
        _boxes(ax, [("", [_values(rows, n, m) for n in have])], have, [_color(names, n) for n in have])
        ax.set_title(_title(rows, names, m))
        ax.set_xticks([])
    _legend(fig, names, [_color(names, n) for n in names])
    return fig


def _slices(ex: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    names = list(ex["preds"])
    cols: list[tuple[str, np.ndarray, str]] = []
    gt_p, gt_l = ex["phantom"], ex["labels"]
    lo, hi = float(gt_p.min()), float(gt_p.max())
    if any("recon" in ex["preds"][n] for n in names):
        cols.append(("ground truth (phantom)", gt_p, "gt"))
    for n in names:
        if "recon" in ex["preds"][n]:
            cols.append((f"{n}: recon", ex["preds"][n]["recon"], "recon"))
            cols.append((f"{n}: |recon − phantom|", np.abs(ex["preds"][n]["recon"] - gt_p), "diff"))
    if any("labels" in ex["preds"][n] for n in names):
        cols.append(("ground truth (labels)", gt_l, "labels"))
    for n in names:
        if "labels" in ex["preds"][n]:
            cols.append((f"{n}: labels", ex["preds"][n]["labels"], "labels"))
    if not cols:
        return None
    ncol = min(4, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.3 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img, kind) in zip(axes.ravel(), cols):
        if kind == "gt":
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        elif kind == "recon":
            vlo, vhi = np.percentile(img, [1, 99])
            ax.imshow(img, cmap="gray", vmin=vlo, vmax=max(vhi, vlo + 1e-12))
        elif kind == "diff":
            ax.imshow(img, cmap="magma", vmin=0, vmax=max(hi - lo, 1e-12))
        else:
            lab = np.where(img == 255, np.nan, img.astype(np.float64))
            ax.imshow(lab, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        ax.set_title(title, fontsize=8)
    return fig


def _summary_table(payload: dict[str, Any], names: list[str], metrics: list[str]) -> str:
    comp = payload.get("comparison") or {"metrics": {}}
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    extra = "".join(f"<th>{html.escape(n)} − {html.escape(names[0])}: median Δ (better in)</th>"
                    for n in names[1:])
    lines = [f"<table><tr><th>metric</th>{head}{extra}</tr>"]
    for m in metrics:
        best = comp["metrics"].get(m, {}).get("best")
        cells = []
        for n in names:
            s = payload["predictions"][n]["overall"].get(m)
            if s is None:
                cells.append("<td>–</td>")
                continue
            cls = ' class="best"' if n == best else ""
            cells.append(f"<td{cls}>{_fmt(s['median'])} [{_fmt(s['q1'], 3)}, {_fmt(s['q3'], 3)}]"
                         f"<br><small>mean {_fmt(s['mean'])}, n {s['n']}</small></td>")
        for n in names[1:]:
            v = comp["metrics"].get(m, {}).get("vs_reference", {}).get(n)
            cells.append("<td>–</td>" if v is None else
                         f"<td>{_fmt(v['median_diff'], 3)} ({100 * v['frac_better']:.0f} %)</td>")
        arrow = "↑" if m != "nrmse" else "↓"
        lines.append(f"<tr><td>{html.escape(m)} {arrow}</td>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _breakdown_table(payload: dict[str, Any], names: list[str], metrics: list[str], key: str) -> str:
    """Medians per group (cell count or tilt-span bin), with each prediction's own sample count:
    predictions may cover different samples, so one shared count would misstate all but one."""
    counts = "".join(f"<th>{html.escape(n)}: samples</th>" for n in names)
    head = "".join(f"<th>{html.escape(n)}: {html.escape(m)}</th>" for m in metrics for n in names)
    groups = sorted({g for n in names for g in payload["predictions"][n][key]},
                    key=lambda g: float(re.match(r"-?[0-9.e+]+", g).group(0)))  # type: ignore[union-attr]
    lines = [f"<table><tr><th>{'cells' if key == 'by_n_cells' else 'span (deg)'}</th>{counts}{head}</tr>"]
    for g in groups:
        cells = [f"<td>{payload['predictions'][n][key].get(g, {}).get('n_samples', 0)}</td>" for n in names]
        for m in metrics:
            for n in names:
                s = payload["predictions"][n][key].get(g, {}).get(m)
                cells.append(f"<td>{_fmt(s['median'] if s else None)}</td>")
        lines.append(f"<tr><td>{html.escape(g)}</td>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def render_report(result: Any) -> tuple[str, dict[str, bytes]]:
    """The HTML report of ``result`` (a ScoreResult) and its figures (``fig-*.png`` name → PNG bytes,
    also embedded in the page), rendered in memory: nothing is written."""
    import matplotlib

    matplotlib.use("Agg")
    payload, rows = result.payload, result.rows
    names = list(payload["predictions"])
    metrics: list[str] = []
    for n in names:
        metrics += [m for m in payload["predictions"][n]["metrics"] if m not in metrics]
    key_metrics = [m for m in ("nrmse", "psnr", "ssim", "mean_iou") if m in metrics]
    span_metrics = [m for m in ("nrmse", "psnr", "ssim") if m in metrics] or ["mean_iou"]
    pngs: dict[str, bytes] = {}

    def embed(name: str, fig: Any) -> str:
        if fig is None:
            return ""
        data = _png(fig)
        pngs[f"fig-{name}.png"] = data
        return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    gt = payload["ground_truth"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>simaq-factory scores</title>"
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Benchmark scores</h1>",
        f"<p>Ground truth <code>{html.escape(gt['path'])}</code> (recipe {gt['recipe_id'][:12]}, "
        f"{gt['n_samples']} samples of {' × '.join(map(str, gt['shape_zyx']))}). Predictions: "
        + ", ".join(f"<b>{html.escape(n)}</b> (<code>{html.escape(payload['predictions'][n]['path'])}"
                    f"</code>, {payload['predictions'][n]['n_scored']} samples)" for n in names) + ".</p>",
        "<h2>Summary</h2><p>Median [quartiles] per metric over each prediction's own samples (↑ higher "
        "is better, ↓ lower); highlighted: the best median over the samples every prediction covers. "
        "With several predictions, Δ is the median paired difference against "
        f"<b>{html.escape(names[0])}</b> and the percentage counts the samples where it is better "
        "(ties, equal within rounding, count half).</p>",
        _summary_table(payload, names, metrics),
        "<h2>Distributions</h2>",
        embed("distributions", _distributions(rows, names, key_metrics) if key_metrics else None),
    ]
    fig5 = embed("iou-by-cells", _iou_by_cells(payload, rows, names))
    if fig5:
        margin = payload["conventions"].get("fov_margin")
        parts += ["<h2>IoU per class by cell count</h2><p>As the paper's Figure 5: one box per "
                  "prediction and cell count; undefined IoUs (class absent from both) are left out. "
                  f"Scored inside the field of view (margin {_fmt(margin)} voxels; <code>simaq-train "
                  "evaluate</code> and <code>baseline</code> default to 5).</p>",
                  fig5]
    parts += ["<h2>Scores vs tilt span</h2>", embed("vs-span", _vs_span(rows, names, span_metrics)),
              "<h2>By cell count (medians)</h2>", _breakdown_table(payload, names, key_metrics, "by_n_cells"),
              "<h2>By tilt span (medians)</h2>", _breakdown_table(payload, names, key_metrics, "by_span_deg")]
    ex = result.examples
    where = f"{ex['index']}, acquisition axis {ex['axis']}" if len(gt.get("tilt_axes", [0])) > 1 else ex["index"]
    parts += [f"<h2>Example</h2><p>Sample {where} (median {html.escape(ex['key'])} of "
              f"{html.escape(names[0])}), slice z = {ex['z']}. Reconstructions (after the fit, if any) "
              "are shown on their own 1–99 % grey range, differences on the phantom's range.</p>",
              embed("example", _slices(ex))]
    conv = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                   for k, v in payload["conventions"].items())
    parts += [f"<h2>Conventions</h2><ul>{conv}</ul></body></html>"]
    return "\n".join(parts), pngs
