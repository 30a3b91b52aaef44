"""Tiny synthetic datasets in the simaq-factory on-disk format (README "The dataset"), for tests and
demos of the training package without the factory's physics.

Each sample holds a few "cells": balls labelled 1 containing a smaller ball 2 (vacuole) and a tiny
ball 3 (lipid droplet). The reconstruction is the label's mean intensity (background 0.05, cell
0.35, vacuole 0.18, droplet 0.57, as LACs), box-blurred, plus Gaussian noise. For a three-axis
dataset ``recon`` is (N, A, Z, Y, X) with a copy per acquisition axis ``k``, blurred along that
axis's beam direction ``(k + 1) mod 3``, and the card carries the cyclic ``axis_frames``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

INTENSITY = np.array([0.05, 0.35, 0.18, 0.57], np.float32)


def _ball(shape: tuple[int, int, int], centre: np.ndarray, radius: float) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius * radius


def synthetic_sample(shape: tuple[int, int, int], rng: np.random.Generator, n_cells: int,
                     empty_margin: int = 0) -> np.ndarray:
    """uint8 (Z, Y, X) labels with ``n_cells`` cells; the first and last ``empty_margin`` z-slices
    stay background."""
    labels = np.zeros(shape, np.uint8)
    s = np.asarray(shape, float)
    for _ in range(n_cells):
        r = float(rng.uniform(0.16, 0.24) * s.min())
        lo = np.array([empty_margin + r, r, r]) + 1
        hi = np.array([s[0] - empty_margin - r, s[1] - r, s[2] - r]) - 1
        c = rng.uniform(lo, np.maximum(hi, lo))
        labels[_ball(shape, c, r)] = 1
        labels[_ball(shape, c + rng.uniform(-0.2, 0.2, 3) * r, 0.5 * r)] = 2
        labels[_ball(shape, c + np.array([0.0, 0.65, 0.0]) * r, max(1.2, 0.18 * r))] = 3
    return labels


def _blur(vol: np.ndarray, axis: int) -> np.ndarray:
    out = vol.copy()
    for shift in (-1, 1):
        out += np.roll(vol, shift, axis=axis)
    return out / 3.0


def write_synthetic_dataset(root: str | Path, *, n_samples: int = 4, shape: tuple[int, int, int] = (16, 32, 32),
                            tilt_axes: list[int] | None = None, seed: int = 0, noise: float = 0.03,
                            empty_margin: int = 3, frozen: bool = True,
                            samples_per_shard: int = 2) -> Path:
    """Write ``root/dataset.zarr`` (+ provenance, manifest) and return ``root``."""
    import zarr

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    axes = [0] if tilt_axes is None else list(tilt_axes)
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_samples, *shape), np.uint8)
    n_cells = []
    for i in range(n_samples):
        k = 1 + i % 3
        n_cells.append(k)
        labels[i] = synthetic_sample(shape, rng, k, empty_margin)
    recon = np.zeros((n_samples, len(axes), *shape), np.float32)
    for i in range(n_samples):
        base = INTENSITY[labels[i]]
        for a, k in enumerate(axes):
            recon[i, a] = _blur(base, (k + 1) % 3) + rng.normal(0, noise, shape).astype(np.float32)
    if tilt_axes is None:
        recon = recon[:, 0]
    g = zarr.open_group(root / "dataset.zarr", mode="w")
    g.create_array("labels", data=labels, chunks=(1, min(8, shape[0]), *shape[1:]))
    g.create_array("recon", data=recon, chunks=(1,) * (recon.ndim - 3) + (min(8, shape[0]), *shape[1:]))
    card = {
        "format": "simaq-factory dataset", "schema_version": 1, "recipe_id": f"synthetic-{seed}",
        "seed": seed, "n_samples": n_samples, "shape_zyx": list(shape), "tilt_axis": "z",
        "label_map": {"0": "background", "1": "cell", "2": "vacuole", "3": "lipid_droplet"},
        "ignore_label": 255, "status": "frozen" if frozen else "complete",
    }
    if tilt_axes is not None:
        card["tilt_axes"] = axes
        if len(axes) > 1:  # the format's cyclic frames (docs/acquisition-axes.md)
            card["axis_frames"] = [{"axis": k, "permutation": [k, (k + 1) % 3, (k + 2) % 3]} for k in axes]
    g.attrs.update(card)
    prov = root / "provenance"
    prov.mkdir(exist_ok=True)
    for sh in range(0, n_samples, samples_per_shard):
        recs = [{"index": i, "n_cells": n_cells[i]} for i in range(sh, min(n_samples, sh + samples_per_shard))]
        (prov / f"shard-{sh // samples_per_shard:06d}.json").write_text(json.dumps({"sample_records": recs}))
    if frozen:
        lines = [json.dumps({"index": i, "n_cells": n_cells[i],
                             "labels_sha256": hashlib.sha256(labels[i].tobytes()).hexdigest()})
                 for i in range(n_samples)]
        (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


class InMemoryVolumes:
    """A volume source over in-memory ``(image, labels)`` pairs: what ``WindowStream`` reads from a
    dataset (``len`` and ``load(v)``), for tests of the stream without files."""

    def __init__(self, vols: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.vols = vols

    def __len__(self) -> int:
        return len(self.vols)

    def load(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        return self.vols[v]
