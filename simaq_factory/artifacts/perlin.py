"""Perlin noise fields, generated small with perlin-numpy and resampled on the target device.

The reference read precomputed Perlin volumes and maps from disk (§2.6, §8.2); their generator is
unknown. We generate gradient noise with ``perlin_numpy`` on a small lattice (e.g. 64³ or 32²) from an
integer seed (``numpy.random.default_rng(seed)``), move it to the device, resample it to the output
shape with linear interpolation and min–max normalise it to [0, 1] as the reference did at use time.
Everything here is deterministic given the seed.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from perlin_numpy import generate_fractal_noise_2d, generate_fractal_noise_3d

logger = logging.getLogger(__name__)

__all__ = ["check_lattice", "perlin_maps", "perlin_volume", "minmax_normalise"]


def check_lattice(lattice: int, res: int, octaves: int) -> None:
    """Raise ``ValueError`` unless ``lattice`` is a multiple of ``res · 2**(octaves − 1)``.

    perlin-numpy requires the generated shape to be a multiple of the finest octave's period count.
    """
    finest = res * 2 ** (octaves - 1)
    if lattice % finest != 0:
        raise ValueError(
            f"lattice={lattice} must be a multiple of res·2^(octaves−1) = {res}·2^{octaves - 1} = {finest}"
        )


def minmax_normalise(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Map ``x`` to [0, 1] over ``dims`` (constant fields map to 0)."""
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


def perlin_volume(
    out_shape: tuple[int, int, int],
    *,
    lattice: int,
    res: int,
    octaves: int,
    persistence: float,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """A 3D fractal Perlin field of ``out_shape`` (z, y, x), float32 in [0, 1], on ``device``.

    Generated at ``lattice³`` with ``res`` periods per axis (finest octave ``res·2^(octaves−1)``),
    min–max normalised there, then trilinearly resampled to ``out_shape`` (so ``res`` periods span
    the whole volume).
    """
    check_lattice(lattice, res, octaves)
    rng = np.random.default_rng(int(seed))
    small = generate_fractal_noise_3d(
        (lattice,) * 3, (res,) * 3, octaves=octaves, persistence=persistence, rng=rng
    )
    # Normalised on the lattice: trilinear resampling keeps values in [0, 1] (convex weights)
    # and is cheaper than normalising the full volume.
    t = torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32)).to(device)
    t = minmax_normalise(t, (0, 1, 2))
    big = F.interpolate(t[None, None], size=tuple(out_shape), mode="trilinear", align_corners=False)
    return big[0, 0]


def perlin_maps(
    n: int,
    out_hw: tuple[int, int],
    *,
    lattice: int,
    res: int,
    octaves: int,
    persistence: float,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """``n`` independent 2D fractal Perlin maps of ``out_hw``, float32 (n, H, W), each in [0, 1].

    Maps are drawn one after another from one generator seeded with ``seed`` at ``lattice²`` and
    bilinearly resampled to ``out_hw`` on ``device``; each map is min–max normalised on its own.
    """
    check_lattice(lattice, res, octaves)
    rng = np.random.default_rng(int(seed))
    small = np.empty((n, lattice, lattice), dtype=np.float32)
    for i in range(n):
        small[i] = generate_fractal_noise_2d(
            (lattice, lattice), (res, res), octaves=octaves, persistence=persistence, rng=rng
        )
    t = torch.from_numpy(small).to(device)
    big = F.interpolate(t[:, None], size=tuple(out_hw), mode="bilinear", align_corners=False)
    return minmax_normalise(big[:, 0], (1, 2))
