"""Perlin-noise helpers shared by the noise banks and their users.

The reference read precomputed Perlin volumes and maps from disk (§2.6, §8.2); their generator is
unknown. Our banks (:mod:`simaq_factory.artifacts.banks`) generate gradient noise with
``perlin_numpy`` on a small lattice (e.g. 64³ or 32²); users resample an entry to the output shape
with linear interpolation on their device and min–max normalise it to [0, 1], as the reference did
at use time.
"""

from __future__ import annotations

import torch

__all__ = ["minmax_normalise"]


def minmax_normalise(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Map ``x`` to [0, 1] over ``dims`` (constant fields map to 0)."""
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
