"""``preview``: one PNG with orthogonal slices of a sample — the picture a user looks at first.

Rows: phantom (LAC), labels over the phantom, noisy volume (when stored), reconstruction (one row
per acquisition axis when ``acquisition.axes`` is 3); columns: the z (tilt-axis) slice, the y slice
and the x slice through the sample's labelled centre. A last row shows one projection near 0° and
the sinogram of the central z slice (of the z-axis acquisition) when sinograms are stored: the
projection in voxels (equal aspect, as the slices), the sinogram's rows at their recorded angles on
an axis in degrees (angles left out of a sample's acquisition show as an empty band).
Every image has its own colour bar; the labels row's names the classes of its colour overlay.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from simaq_factory.errors import BadInput, check_output_file
from simaq_factory.labels import LABEL_NAMES
from simaq_factory.store.inspect import (
    built_records,
    check_shards_done,
    dataset_specs,
    open_checked,
    open_dataset_recipe,
)

#: The PNG's resolution (dots per inch); the figure is laid out at it.
DPI = 80
LABEL_COLOURS = {1: (0.2, 0.7, 0.2), 2: (0.2, 0.4, 1.0), 3: (1.0, 0.8, 0.1), 4: (0.9, 0.2, 0.6)}


def _centre(labels: np.ndarray) -> tuple[int, int, int]:
    idx = np.argwhere(labels > 0)
    if idx.size == 0:
        return tuple(s // 2 for s in labels.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in np.round(idx.mean(axis=0)))  # type: ignore[return-value]


def _overlay(labels: np.ndarray) -> np.ndarray:
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for value, colour in LABEL_COLOURS.items():
        m = labels == value
        rgba[m, :3] = colour
        rgba[m, 3] = 0.45
    return rgba


def _class_bar(fig: Any, ax: Any, classes: list[int]) -> None:
    """A categorical colour bar naming the label classes of the overlay (those in the sample)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    classes = classes or [1]
    cmap = ListedColormap([LABEL_COLOURS[v] for v in classes])
    norm = BoundaryNorm(np.arange(len(classes) + 1) - 0.5, cmap.N)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.03,
                       ticks=np.arange(len(classes)))
    bar.ax.set_yticklabels([LABEL_NAMES[v].replace("_", " ") for v in classes], fontsize=7)


def _angle_bands(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sinogram panel's rows on an axis in degrees. ``angles``: the acquired angles, ascending.
    Each angle is a band centred on it that meets its neighbours halfway; where angles were left out
    (a spacing over 1.5 typical steps, the median spacing) its band ends half a step past it and an
    empty band spans the gap, so the picture is linear in angle and shows the gaps as gaps.
    Returns the band edges (ascending, one more than the bands) and each band's index into
    ``angles`` (−1: the empty band of a gap)."""
    steps = np.diff(angles)
    step = float(np.median(steps)) if steps.size else 1.0
    half = step / 2 if step > 0 else 0.5
    edges, rows = [float(angles[0]) - half], []
    for i in range(1, len(angles)):
        if steps[i - 1] > 3 * half:  # a gap: this band ends, an empty one spans to the next band
            edges += [float(angles[i - 1]) + half, float(angles[i]) - half]
            rows += [i - 1, -1]
        else:
            edges.append(float(angles[i - 1] + angles[i]) / 2)
            rows.append(i - 1)
    edges.append(float(angles[-1]) + half)
    rows.append(len(angles) - 1)
    return np.asarray(edges), np.asarray(rows)


def preview_figure(g: Any, index: int, method: str, rid: str) -> Any:
    """The preview of sample ``index`` as a matplotlib Figure (not saved). ``g``: the dataset's arrays
    by name (a zarr group, or a dict of arrays); ``method``: the reconstruction method, named in the
    recon row; ``rid``: the recipe id, named in the title. Laid out by matplotlib's constrained layout,
    which leaves room for the title and every colour bar whatever the number of rows (tight_layout
    drew the title over the first row's panel titles once there were seven rows)."""
    from matplotlib.figure import Figure

    labels = g["labels"][index]
    volumes: list[tuple[str, np.ndarray, str]] = [("phantom (LAC)", g["phantom"][index], "gray")]
    if "noisy" in g:
        volumes.append(("noisy (LAC)", g["noisy"][index].astype(np.float32), "gray"))
    recon = g["recon"][index].astype(np.float32)
    if recon.ndim == 3:
        volumes.append((f"recon (raw {method.upper()})", recon, "gray"))
    else:  # one reconstruction per acquisition axis, all in (z, y, x)
        volumes += [(f"recon, tilt axis {'zyx'[k]}", recon[k], "gray") for k in range(recon.shape[0])]
    present = [v for v in LABEL_COLOURS if np.any(labels == v)]
    cz, cy, cx = _centre(labels)
    cuts: list[tuple[str, Any]] = [(f"z={cz}", np.s_[cz, :, :]), (f"y={cy}", np.s_[:, cy, :]),
                                   (f"x={cx}", np.s_[:, :, cx])]
    has_sino = "sinogram" in g and "angles" in g
    rows = len(volumes) + 1 + int(has_sino)
    fig = Figure(figsize=(11, 3.3 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for r, (title, vol, cmap) in enumerate(volumes[:1] + [("labels", None, "")] + volumes[1:]):
        for c, (cut_name, cut) in enumerate(cuts):
            ax = axes[r, c]
            base = volumes[0][1][cut] if vol is None else vol[cut]
            lo, hi = np.percentile(base, [0.5, 99.5]) if vol is not None else (base.min(), base.max())
            im = ax.imshow(base, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="upper")
            if vol is None:
                ax.imshow(_overlay(labels[cut]), origin="upper")
                _class_bar(fig, ax, present)
            else:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            ax.set_title(f"{title}  {cut_name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if has_sino:
        angles = g["angles"][index]
        sino = g["sinogram"][index]
        if angles.ndim == 2:  # three axes: show the z-axis acquisition (the one-axis frame)
            angles, sino = angles[0], sino[0]
        k = int(np.isfinite(angles).sum())
        sino = sino[:k]
        a0 = int(np.argmin(np.abs(angles[:k]))) if k else 0
        # the projection in voxels along both axes, as the slices above (equal aspect: a round cell is round)
        ax = axes[-1, 0]
        im = ax.imshow(sino[a0], cmap="magma", aspect="equal", origin="upper")
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(f"projection at {angles[a0]:.1f} deg (z x detector)", fontsize=9)
        # the sinogram's rows at their angles, the first (lowest) at the top as before; gaps left empty
        order = np.argsort(angles[:k], kind="stable")
        edges, bands = _angle_bands(angles[:k][order])
        rows_img = sino[order][:, cz, :].astype(np.float32)[np.maximum(bands, 0)]
        rows_img[bands < 0] = np.nan
        ax = axes[-1, 1]
        mesh = ax.pcolormesh(np.arange(sino.shape[-1] + 1) - 0.5, edges, np.ma.masked_invalid(rows_img),
                             cmap="magma", shading="flat")
        ax.set_ylim(edges[-1], edges[0])
        ax.set_ylabel("angle (deg)", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(f"sinogram of z={cz} (angle x detector)", fontsize=9)
        axes[-1, 2].axis("off")
        axes[-1, 2].text(0.0, 0.5, f"{k} angles, {angles[0]:.1f} to {angles[k - 1]:.1f} deg",
                         fontsize=9, transform=axes[-1, 2].transAxes)
    # named by its recipe, not by the folder's name here (a published copy's previews are the same bytes)
    frame = ("z = tilt axis; beam along y at 0 deg" if recon.ndim == 3 else
             "three tilt axes, each recon row names its own; the sinogram is axis z's, beam along y at 0 deg")
    fig.suptitle(f"recipe {rid[:12]}: sample {index}  ({frame})", fontsize=11)
    return fig


def render_preview(out: Path, index: int, png: Path, *, freezing: bool = False) -> Path:
    """Write the preview of sample ``index`` of the dataset at ``out`` to ``png``. ``freezing``: for
    ``freeze``, which has just checked every shard and writes its previews into the dataset."""
    recipe, rid = open_dataset_recipe(out)
    built_records(out, recipe, [index])  # in range and built (BadInput naming --index otherwise)
    if png.suffix.lower() != ".png":
        raise BadInput(str(png), "preview output must be a .png file")
    # not a directory, under no file, writable, in no dataset (but freeze's own): before anything is rendered
    check_output_file(png, in_dataset=out if freezing else None)
    if not png.parent.is_dir():
        raise BadInput(str(png), f"directory {png.parent} does not exist")
    # every array it reads, its metadata checked first (a one-line error naming a damaged file), and
    # the sample's shard files against their checksums (a lost shard reads as zeros, a flipped byte
    # as 1e23: a picture of damage would look like data)
    specs = dataset_specs(recipe)
    g = open_checked(out, specs, list(specs))
    if not freezing:
        check_shards_done(out, recipe, rid, specs, [index // recipe.dataset.samples_per_shard], "nothing rendered")
    fig = preview_figure(g, index, recipe.reconstruction.method, rid)
    tmp = png.with_name(f".{png.name}.partial")  # renamed into place: no half-written PNG
    try:
        with warnings.catch_warnings():  # a folder name in a script the font lacks: boxes, not 4 lines
            warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
            fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, png)
    finally:
        tmp.unlink(missing_ok=True)
    return png
