"""Perlin-noise helpers shared by the noise banks and their users.

The reference read precomputed Perlin volumes and maps from disk (§2.6, §8.2); their generator is
unknown. Our banks (:mod:`simaq_factory.artifacts.banks`) generate gradient noise with
``perlin_numpy`` on a small lattice (e.g. 64³ or 32²); users resample an entry to the output shape
with linear interpolation on their device and min–max normalise it to [0, 1], as the reference did
at use time.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["check_lattice", "minmax_normalise"]


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
