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

Code we do not own (perlin-numpy draws gradient angles and takes ``np.sin``/``np.cos`` of them) gets
the same through :class:`LibmGenerator`: it hands out uniform draws as :class:`LibmArray`, whose
``__array_ufunc__`` answers ``sin``, ``cos`` and ``exp`` of the draws, and of anything computed from
them by ufuncs, with the functions here.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

__all__ = ["LibmArray", "LibmGenerator", "cos", "exp", "sin"]


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


#: ufuncs a :class:`LibmArray` answers from this module (looked up by name at call time)
_LIBM_UFUNCS = {np.exp: "exp", np.sin: "sin", np.cos: "cos"}
#: ufuncs whose numpy loops are not portable and that have no libm stand-in here
_REFUSED_UFUNCS = frozenset({np.exp2, np.expm1, np.log, np.log2, np.log10, np.log1p, np.tan, np.arcsin,
                             np.arccos, np.arctan, np.arctan2, np.sinh, np.cosh, np.tanh, np.power,
                             np.float_power, np.cbrt})


class LibmArray(np.ndarray):
    """A float array whose ``np.sin``, ``np.cos`` and ``np.exp`` are the C library's per element.

    Other ufuncs run as usual and keep the tag, so ``np.sin(2 * np.pi * draws)`` is
    ``portable_math.sin`` of the exactly rounded product. Ufuncs with non-portable numpy loops and no
    stand-in here (``log``, ``power``, ``tan``, ...) raise ``TypeError`` instead of rounding
    silently per CPU.
    """

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if "out" in kwargs:
            raise TypeError(f"LibmArray: {ufunc.__name__} with out= is not supported")
        plain = [x.view(np.ndarray) if isinstance(x, LibmArray) else x for x in inputs]
        if method == "__call__" and ufunc in _LIBM_UFUNCS:
            return globals()[_LIBM_UFUNCS[ufunc]](*plain, **kwargs)
        if ufunc in _REFUSED_UFUNCS:
            raise TypeError(f"LibmArray: numpy's {ufunc.__name__} rounds differently per CPU and has "
                            "no libm stand-in in simaq_factory.portable_math")
        result = getattr(ufunc, method)(*plain, **kwargs)
        return result.view(LibmArray) if type(result) is np.ndarray else result


class LibmGenerator:
    """The uniform draws of a ``numpy.random.Generator`` as :class:`LibmArray`.

    For third-party code that takes an ``rng`` and only calls ``rng.uniform`` (perlin-numpy): the
    draws are the generator's own (exactly rounded on every CPU), and the trigonometry the code
    applies to them is the C library's. Any other generator method raises ``AttributeError``, so a
    caller that starts drawing otherwise is noticed rather than silently given untagged draws.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None) -> LibmArray:
        return np.asarray(self._rng.uniform(low, high, size), dtype=np.float64).view(LibmArray)
