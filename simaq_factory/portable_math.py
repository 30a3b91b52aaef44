"""Elementwise exp, sin and cos with the same bits on every CPU of a platform.

NumPy evaluates ``exp``, ``log``, ``sin``, ``cos``, ``power`` and their kin with its own SIMD
loops, and on CPUs with AVX-512 it switches to SVML kernels that round differently from the C
library (numpy/numpy#23523): the same seed would lay out a slightly different phantom on an
AVX-512 cluster node than on a laptop. The phantom's sampling code therefore takes these
functions from here: the C library's scalar function applied to each element, which is what
NumPy's own loops do on every other CPU (the same bits there) and what its random generators use.
They are meant for the small parameter arrays of sampling (kernels, angles), not for voxels; bulk
voxel work is torch arithmetic, whose basic operations are exactly rounded everywhere.
Integer powers and square roots need nothing: ``x * x``, ``np.sqrt`` and division are exact IEEE
operations, so the sampling code spells ``x ** 3`` as ``x * x * x`` and ``x ** -0.5`` as
``1 / np.sqrt(x)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

__all__ = ["cos", "exp", "sin"]


def _elementwise(f: Callable[[float], float]) -> Callable[[Any], np.ndarray]:
    ufunc = np.frompyfunc(f, 1, 1)

    def apply(x: Any) -> np.ndarray:
        return np.asarray(ufunc(np.asarray(x, dtype=np.float64)), dtype=np.float64)

    apply.__name__ = f.__name__
    apply.__doc__ = f"``math.{f.__name__}`` of each element, float64 (same shape as ``x``)."
    return apply


exp = _elementwise(math.exp)
sin = _elementwise(math.sin)
cos = _elementwise(math.cos)
