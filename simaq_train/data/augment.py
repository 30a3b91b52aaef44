"""Per-sample augmentations drawn from an explicit generator (fixes reference §8.3 bug 20).

Geometric: flips of each in-plane axis, a random multiple of 90° in-plane rotation (square slices).
Intensity: contrast scale, brightness offset, additive Gaussian noise, each with its own probability.
Every random number is drawn in a fixed order whatever branch is taken, so a sample's transform is
a pure function of its generator's seed.
"""

from __future__ import annotations

import numpy as np

from simaq_train.config import AugmentConfig


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """image (W, H, X) float32 window, labels (H, X) uint8 → transformed copies."""
    u = rng.random(8)
    k = int(rng.integers(1, 4))
    if not cfg.enable:
        return image, labels
    if u[0] < cfg.flip:
        image, labels = image[:, ::-1, :], labels[::-1, :]
    if u[1] < cfg.flip:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    if u[2] < cfg.rot90 and image.shape[1] == image.shape[2]:
        image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k, axes=(0, 1))
    image = np.array(image, dtype=np.float32, order="C")  # always a copy: the caller's data stays intact
    labels = np.ascontiguousarray(labels)
    if u[3] < cfg.intensity:
        image *= np.float32(1.0 + cfg.contrast * (2.0 * u[4] - 1.0))
    if u[5] < cfg.intensity:
        image += np.float32(cfg.brightness * (2.0 * u[6] - 1.0))
    if u[7] < cfg.intensity and cfg.noise_std > 0:
        sigma = cfg.noise_std * float(rng.random())
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return image, labels
