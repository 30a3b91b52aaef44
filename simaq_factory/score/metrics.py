"""Image-quality and segmentation metrics on (Z, Y, X) volumes, all in float64 NumPy.

Conventions (stated once, used by :mod:`simaq_factory.score.run` and ``docs/benchmarking.md``):

* Field of view (FOV): the cylinder along Z whose (y, x) cross-section is the reconstruction circle
  of the dataset's geometry — radius ``n // 2`` around the rotation axis at ``(c, c)``, ``c`` from
  ``reconstruction.center`` (``(n-1)/2`` for "astra", ``n//2`` for "skimage"); the same circle FBP
  clips to (:attr:`simaq_factory.tomo.Geometry.circle_radius`).
* ``data_range`` of PSNR and SSIM: ground-truth ``max - min`` inside the FOV, per sample.
* NRMSE: ``||pred - gt|| / ||gt||`` over FOV voxels (scikit-image's "euclidean" normalisation).
* PSNR: ``10 log10(data_range² / MSE)`` over FOV voxels, in dB.
* SSIM: Gaussian-window SSIM in 3D exactly as scikit-image's ``structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R)`` (window radius 5,
  reflect boundaries, K1 = 0.01, K2 = 0.03); with a ``mask`` the SSIM map is averaged over the mask
  instead of over scikit-image's border-cropped box.
* IoU / Dice per class: voxels whose ground truth is ``ignore_label`` (255) are left out entirely;
  a class absent from both prediction and ground truth has an undefined score (NaN, reported as
  ``null``), never 0 or 1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
    "confusion_counts",
    "fov_mask",
    "iou_dice",
    "nrmse",
    "psnr",
    "ssim",
]

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # with sigma 1.5 an 11-tap window, as scikit-image and Wang et al. 2004
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_SLAB = 32  # z-slices per SSIM slab (bounds memory at 512³)


def fov_mask(n: int, center: float, radius: float) -> np.ndarray:
    """Bool (n, n) disk ``(y - c)² + (x - c)² <= radius²`` in pixel indices."""
    r = np.arange(n, dtype=np.float64) - center
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape}, prediction {pred.shape}")
    return np.asarray(gt, dtype=np.float64), np.asarray(pred, dtype=np.float64)


def nrmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """``||pred - gt||₂ / ||gt||₂`` over all given voxels (pass FOV voxels); NaN if ``gt`` is 0."""
    g, p = _pair(gt, pred)
    denom = math.sqrt(float(np.sum(g * g)))
    if denom == 0.0:
        return math.nan
    return math.sqrt(float(np.sum((p - g) ** 2))) / denom


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical inputs, NaN when ``data_range`` <= 0."""
    g, p = _pair(gt, pred)
    if not data_range > 0:
        return math.nan
    mse = float(np.mean((p - g) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def _ssim_map(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """The SSIM map of two float64 arrays of the same shape (Gaussian window, reflect boundaries)."""

    def filt(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den  # type: ignore[no-any-return]


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Mean structural similarity of two (Z, Y, X) volumes (any N-D shape works).

    Args:
        gt, pred: arrays of one shape, any real dtype (computed in float64).
        data_range: the value range R in ``C1 = (0.01 R)²``, ``C2 = (0.03 R)²``; must be > 0.
        mask: optional bool array broadcastable to the shape (e.g. the (Y, X) FOV disk); the SSIM
            map is averaged over its voxels. Without it the map is averaged over the box that
            excludes ``radius = 5`` voxels at every border, which equals scikit-image.

    Returns:
        Mean SSIM (1.0 for identical inputs); NaN when ``data_range`` <= 0 or the mask is empty.

    The volume is filtered in Z-slabs with a halo of the window radius, so memory stays bounded at
    512³; the separable filter makes this exactly equal to filtering the whole volume.
    """
    g, p = _pair(gt, pred)
    if not data_range > 0:
        return math.nan
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(g.shape) < 2 * radius + 1:
        raise ValueError(f"SSIM needs every axis >= {2 * radius + 1} voxels, got {g.shape}")
    if mask is None:
        keep = np.zeros(g.shape, dtype=bool)
        keep[tuple(slice(radius, s - radius) for s in g.shape)] = True
    else:
        keep = np.broadcast_to(np.asarray(mask, dtype=bool), g.shape)
    total, count = 0.0, 0
    nz = g.shape[0]
    for z0 in range(0, nz, _SLAB):
        z1 = min(z0 + _SLAB, nz)
        h0, h1 = max(0, z0 - radius), min(nz, z1 + radius)
        smap = _ssim_map(g[h0:h1], p[h0:h1], data_range)[z0 - h0 : z1 - h0]
        k = keep[z0:z1]
        total += float(smap[k].sum())
        count += int(k.sum())
    return total / count if count else math.nan


def confusion_counts(gt: np.ndarray, pred: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """int64 (256, 256) counts ``[g, p]`` of uint8-valued labels, voxels with ``gt == ignore`` dropped.

    Processed in Z-slabs so memory stays bounded. Predicted ids above 255 (instance labels in a
    uint16 volume) are no class, counted as 255 (a miss of the true class); negative ids, and ground
    truth outside 0..255, raise ``ValueError``.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape}, prediction {pred.shape}")
    counts = np.zeros(256 * 256, dtype=np.int64)
    step = max(1, (1 << 22) // max(1, int(np.prod(gt.shape[1:]))))
    for z0 in range(0, gt.shape[0], step):
        g = np.asarray(gt[z0 : z0 + step]).astype(np.int64).ravel()
        p = np.asarray(pred[z0 : z0 + step]).astype(np.int64).ravel()
        if g.size and (g.min() < 0 or g.max() > 255):
            raise ValueError("ground-truth labels must be integers in 0..255")
        if p.size and p.min() < 0:
            raise ValueError(f"labels must be integers >= 0, got {int(p.min())}")
        np.minimum(p, 255, out=p)  # ids beyond 255: no class, as 255 is
        valid = g != ignore_label
        counts += np.bincount(g[valid] * 256 + p[valid], minlength=256 * 256)
    return counts.reshape(256, 256)


def iou_dice(counts: np.ndarray, classes: list[int]) -> dict[int, tuple[float, float]]:
    """Per class ``c``: (IoU, Dice) from a confusion matrix ``counts[g, p]`` (see above).

    ``IoU = TP / (TP + FP + FN)``, ``Dice = 2 TP / (2 TP + FP + FN)``; both NaN when the class is in
    neither volume. A predicted value that is no class (e.g. 255) counts as a miss of the true class.
    """
    out: dict[int, tuple[float, float]] = {}
    for c in classes:
        tp = int(counts[c, c])
        fn = int(counts[c, :].sum()) - tp
        fp = int(counts[:, c].sum()) - tp
        union = tp + fp + fn
        if union == 0:
            out[c] = (math.nan, math.nan)
        else:
            out[c] = (tp / union, 2 * tp / (2 * tp + fp + fn))
    return out
