"""Per-sample augmentations drawn from an explicit generator (reference §4.9; fixes §8.3 bug 20).

``augment(image, labels, rng, cfg, fov)`` transforms one training window: ``image`` (W, H, X)
float32 (W depth slices along the tilt axis, the centre one is the target), ``labels`` (H, X) uint8
of the centre slice (255 = ignore), ``fov`` (H, X) bool the window's field of view (None = every
pixel). In order, each op with its own probability:

Geometric (image and labels move together; the field of view moves with flips and rotations, and
stays put in the output frame through the warp and the crop):

* flips of each in-plane axis (``flip`` each), a random 90°/180°/270° rotation (``rot90``, square
  windows only; off by default: it turns the missing-wedge direction away from the rows);
* elastic (``elastic_prob``): one 2D displacement field per sample, the same for every depth slice
  (reference §1.11 / §4.9). Image bicubic (border padding: near the window's edge the support
  reads the edge pixels again; the reference pads with 0), labels nearest; a pixel whose nearest
  source is outside the window is 0 / 255;
* resized crop (``resized_crop_prob``): s ~ U(``resized_crop_scale_min``, 1), a crop of
  (int(H·s), int(X·s)) pixels at a random offset, resized back to (H, X): image by area averaging
  (torch's ``mode='area'``: each output pixel the mean of its bin, 1 or 2 pixels per axis when enlarging), labels by
  nearest (pixel centres, like ``nearest-exact``).

After the warp and the crop, pixels outside the field of view are set to exactly 0 (image) and 255
(labels); labels are only ever copied, never interpolated, so they stay in the input's label set
plus 255. Pixels pulled from outside the window (or, since the inputs are 0 / 255 there, from
outside the field of view) are 0 / 255 too.

Intensity (inside the field of view only; pixels outside it are never changed):

* brightness (``intensity``): + U(−``brightness``, ``brightness``), an absolute offset (the
  normalised intensities are standard-normal quantiles; the reference scaled it by the batch max);
* contrast (``intensity``): (image − m)·U(1 − ``contrast``, 1 + ``contrast``) + m, m = the window's
  mean over the field of view (so the mean is kept);
* blur (``blur_prob``): a 3×3 Gaussian per depth slice, σ ~ U(``blur_sigma_range``), normalised
  over the field of view (a weighted mean of field-of-view pixels only: no dark rim at its edge);
* noise (``intensity``): + N(0, s²), s ~ U(0, ``noise_std``);
* invert (``invert_prob``): image = −image.

Elastic field (pixel units, whatever the window size). The recipe is the reference's (§1.11,
torchvision's ElasticTransform): each displacement component is U(−1, 1) noise smoothed by a
Gaussian of std σ, times α/size in normalised grid units, i.e. times α/2 in pixels. Its
per-component standard deviation is α / (4·√(3π)·σ) ≈ α / (12.3·σ) pixels — for the reference
generator's α = 500, σ = 40 about 1.0 px. Two departures keep that magnitude from depending on the
window size: the noise is drawn on a grid padded by the kernel radius, so the smoothing never sees
the window's edge (the reference's reflect padding inflates the field when σ is not small against
the window, e.g. σ = 40 on a 32² crop), and the smoothed noise is scaled to that expected std
exactly. For speed the noise lives on nodes spaced max(σ/4, 1) px and is interpolated bilinearly
to the pixels (the construction of ``simaq_factory.phantom.deform``; ≤ 1 % variance error).
σ and α are pixels of the window: a 32² crop of a 64² slice gets the same field statistics as the
same region of the whole slice. Defaults α = 120, σ = 10 (inside the §4.9 proposal's α ≈ 50–500,
σ ≈ 5–40): ≈ 1.0 px per-component RMS like the reference generator's deformation (§1.11), a few px
at most over a 512² slice, with a correlation length short enough to bend boundaries inside a 32²
CPU crop (σ = 40 would move such a crop almost rigidly). α = 0 is the identity.

Determinism: a sample's transform is a pure function of the generator's state and the inputs
(shapes, field of view): ten decision uniforms are drawn first, then each op that fires draws its
parameters in the order above. Torch does the bicubic ``grid_sample`` and the area resize
(``adaptive_avg_pool2d``); each output element of both is computed by the same operations whatever
the thread split, so the bytes do not depend on the thread count (tested at 1 and 2 threads);
everything else is NumPy / SciPy elementwise or fixed-order work.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from simaq_train.config import AugmentConfig
from simaq_train.data.sources import IGNORE  # 255: unlabelled, or outside the field of view

_NODES_PER_SIGMA = 4.0
_TRUNCATE = 4.0


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
            fov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """image (W, H, X) float32 window, labels (H, X) uint8, fov (H, X) bool or None (all inside)
    → transformed copies (the inputs are never modified)."""
    if not cfg.enable:
        return image, labels
    u = rng.random(10)
    if u[0] < cfg.flip:
        image, labels = image[:, ::-1, :], labels[::-1, :]
        fov = None if fov is None else fov[::-1, :]
    if u[1] < cfg.flip:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
        fov = None if fov is None else fov[:, ::-1]
    if u[2] < cfg.rot90 and image.shape[1] == image.shape[2]:
        k = int(rng.integers(1, 4))
        image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k, axes=(0, 1))
        fov = None if fov is None else np.rot90(fov, k)
    image = np.array(image, dtype=np.float32, order="C")  # always a copy: the caller's data stays intact
    labels = np.array(labels, dtype=np.uint8, order="C")
    inside = None if fov is None else np.ascontiguousarray(fov, dtype=bool)

    moved = False
    if u[3] < cfg.elastic_prob and cfg.elastic_alpha > 0:
        disp = elastic_field(image.shape[1:], cfg.elastic_alpha, cfg.elastic_sigma, rng)
        image, labels = warp(image, labels, disp)
        moved = True
    if u[4] < cfg.resized_crop_prob:
        image, labels, changed = resized_crop(image, labels, cfg.resized_crop_scale_min, rng)
        moved = moved or changed
    image, labels = np.ascontiguousarray(image), np.ascontiguousarray(labels)  # reshapes below are views
    if moved and inside is not None:
        out = np.flatnonzero(~inside)
        image.reshape(image.shape[0], -1)[:, out] = 0.0
        labels.reshape(-1)[out] = IGNORE

    ops = (u[5] < cfg.intensity, u[6] < cfg.intensity, u[7] < cfg.blur_prob,
           u[8] < cfg.intensity and cfg.noise_std > 0, u[9] < cfg.invert_prob)
    if not any(ops):
        return image, labels
    brightness, contrast, blur, noise, invert = ops
    if inside is None:
        inside = np.ones(image.shape[1:], dtype=bool)
    n_inside = int(np.count_nonzero(inside))
    if n_inside == 0:
        return image, labels
    # whole-array work with the mask: a pixel outside the field of view gets x + (±0) = x or keeps
    # x through np.where, never a changed value (gathering the field of view costs more)
    mask = inside.astype(np.float32)
    if brightness:
        image += np.float32(rng.uniform(-cfg.brightness, cfg.brightness)) * mask
    if contrast:
        f = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)
        m = float(image[:, inside].sum(dtype=np.float64)) / (n_inside * image.shape[0])
        image = np.where(inside, image * np.float32(f) + np.float32(m * (1.0 - f)), image)  # (v − m)·f + m
    if blur:
        lo, hi = cfg.blur_sigma_range
        image = np.where(inside, blur3(image, inside, float(rng.uniform(lo, hi))), image)
    if noise:
        s = np.float32(rng.uniform(0.0, cfg.noise_std))
        z = rng.standard_normal(image.shape, dtype=np.float32)
        z *= s
        z *= mask
        image += z
    if invert:
        image = np.where(inside, np.float32(0.0) - image, image)
    return image, labels


# --- elastic ------------------------------------------------------------------------------------

def elastic_std(alpha: float, sigma: float) -> float:
    """Per-component displacement std in pixels of the §1.11 recipe: α / (4·√(3π)·σ)."""
    return alpha / (4.0 * math.sqrt(3.0 * math.pi) * sigma)


def _kernel(sigma_nodes: float) -> np.ndarray:
    rad = max(1, int(math.ceil(_TRUNCATE * sigma_nodes)))
    k = np.arange(-rad, rad + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / sigma_nodes) ** 2)
    return w / w.sum()


def _lerp_nodes(g: np.ndarray, axis: int, n: int, h: float) -> np.ndarray:
    """Values of node array ``g`` (nodes at −1 + j·h along ``axis``) at pixels 0 … n−1."""
    t = (np.arange(n, dtype=np.float64) + 1.0) / h
    i0 = np.clip(np.floor(t).astype(np.int64), 0, g.shape[axis] - 2)
    f = t - i0
    shape = [1] * g.ndim
    shape[axis] = n
    f = f.reshape(shape)
    return np.take(g, i0, axis=axis) * (1.0 - f) + np.take(g, i0 + 1, axis=axis) * f


def elastic_field(shape_yx: tuple[int, int], alpha: float, sigma: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Displacement (2, H, X) float64 in pixels, (u_y, u_x): U(−1, 1) noise smoothed by a Gaussian
    of std ``sigma`` px with no boundary effect, scaled to a per-component std of
    :func:`elastic_std` (see the module docstring)."""
    h = max(sigma / _NODES_PER_SIGMA, 1.0)
    w = _kernel(sigma / h)
    pad = (len(w) - 1) // 2
    counts = [int(math.ceil((n + 1) / h)) + 2 for n in shape_yx]  # nodes cover [−1, n]
    out = rng.uniform(-1.0, 1.0, size=(2, counts[0] + 2 * pad, counts[1] + 2 * pad))
    for ax in (1, 2):
        out = scipy.ndimage.correlate1d(out, w, axis=ax, mode="constant", cval=0.0)
        out = np.take(out, np.arange(pad, out.shape[ax] - pad), axis=ax)
    out *= elastic_std(alpha, sigma) / math.sqrt((1.0 / 3.0) * float(np.sum(w * w)) ** 2)
    out = _lerp_nodes(out, 1, shape_yx[0], h)
    return _lerp_nodes(out, 2, shape_yx[1], h)


def warp(image: np.ndarray, labels: np.ndarray, disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward warp: output(p) = input(p + disp(p)); image bicubic (every depth slice with the same
    field), labels nearest. A pixel whose nearest source lies outside the window is 0 / 255; near
    the window's edge the bicubic support reads the edge pixels again (border padding), not zeros
    (those blended up to 70 % dark rims into labelled pixels along every crop edge)."""
    _, hh, ww = image.shape
    sy = np.arange(hh, dtype=np.float64)[:, None] + disp[0]
    sx = np.arange(ww, dtype=np.float64)[None, :] + disp[1]
    grid = np.stack([(2.0 * sx + 1.0) / ww - 1.0, (2.0 * sy + 1.0) / hh - 1.0], axis=-1)
    out = F.grid_sample(torch.from_numpy(image)[None], torch.from_numpy(grid.astype(np.float32))[None],
                        mode="bicubic", padding_mode="border", align_corners=False)
    iy = np.floor(sy + 0.5).astype(np.int64)
    ix = np.floor(sx + 0.5).astype(np.int64)
    valid = (iy >= 0) & (iy < hh) & (ix >= 0) & (ix < ww)
    lab = np.where(valid, labels[np.clip(iy, 0, hh - 1), np.clip(ix, 0, ww - 1)], IGNORE)
    img = out[0].numpy()
    img[:, ~valid] = 0.0
    return np.ascontiguousarray(img), lab.astype(np.uint8)


# --- resized crop -------------------------------------------------------------------------------

def resized_crop(image: np.ndarray, labels: np.ndarray, scale_min: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """s ~ U(scale_min, 1), crop (int(H·s), int(X·s)) at a random offset, resize back (image: area,
    labels: nearest at pixel centres). Returns (image, labels, changed); a full-size crop is the
    identity."""
    _, hh, ww = image.shape
    s = rng.uniform(scale_min, 1.0)
    ch, cw = max(1, min(hh, int(hh * s))), max(1, min(ww, int(ww * s)))
    oy, ox = int(rng.integers(0, hh - ch + 1)), int(rng.integers(0, ww - cw + 1))
    if (ch, cw) == (hh, ww):
        return image, labels, False
    i, j = np.arange(hh), np.arange(ww)
    crop = torch.from_numpy(np.ascontiguousarray(image[:, oy : oy + ch, ox : ox + cw]))
    out = F.adaptive_avg_pool2d(crop[None], (hh, ww))[0].numpy()  # each output: its own bin's mean
    ry = oy + np.minimum(((i + 0.5) * ch / hh).astype(np.int64), ch - 1)
    rx = ox + np.minimum(((j + 0.5) * cw / ww).astype(np.int64), cw - 1)
    return np.ascontiguousarray(out), np.ascontiguousarray(labels[np.ix_(ry, rx)]), True


# --- blur ---------------------------------------------------------------------------------------

def blur3(image: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """3×3 Gaussian of std ``sigma`` per depth slice, normalised over ``inside``: each pixel becomes
    the kernel-weighted mean of its neighbours inside the field of view (0 outside)."""
    a = math.exp(-0.5 / (sigma * sigma))
    w = np.array([a, 1.0, a], dtype=np.float32) / np.float32(1.0 + 2.0 * a)
    m = inside.astype(np.float32)

    def sep(x: np.ndarray) -> np.ndarray:  # zero beyond the window; fixed-order elementwise sums
        for ax in (-2, -1):
            y = x * w[1]
            lo = [slice(None)] * x.ndim
            hi = [slice(None)] * x.ndim
            lo[ax], hi[ax] = slice(None, -1), slice(1, None)
            y[tuple(hi)] += x[tuple(lo)] * w[0]
            y[tuple(lo)] += x[tuple(hi)] * w[2]
            x = y
        return x

    num = sep(np.where(inside, image, np.float32(0.0)))
    den = np.where(inside, sep(m), np.float32(1.0))
    return np.where(inside, num / den, np.float32(0.0)).astype(np.float32)
