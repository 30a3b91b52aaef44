"""Parallel-beam acquisition geometry shared by the projector, the filters and FBP.

Conventions (see ``docs``/design §8 and reference-simaq §3.1):

* A volume is indexed ``(z, y, x)``; ``z`` is the rotation (tilt) axis, so every z-slice is an
  independent 2D problem on an ``n × n`` grid. Pixel ``(y, x)`` has its centre at index position
  ``(y, x)``; the image is zero outside the grid.
* The rotation axis passes through the pixel-index point ``(c, c)`` (``c`` = :attr:`Geometry.image_center`).
* At angle ``θ`` the ray through detector coordinate ``t`` (voxel units) is the set of points
  ``x = c + t·cosθ + s·sinθ``, ``y = c − t·sinθ + s·cosθ`` for ``s ∈ ℝ``; hence at ``θ = 0`` rays
  travel along ``y`` and the detector runs along ``x`` (scikit-image's and ASTRA's sign).
* Detector column ``d`` (0 … ``det_count`` − 1) sits at ``t = (d − c_det)·det_spacing`` with
  ``c_det = (det_count − 1)/2 + (c − (n − 1)/2)/det_spacing`` (:attr:`Geometry.det_center`): the axis
  is imaged at ``c_det``; with the default ``det_count = n`` and spacing 1 that is ``c_det = c``.

Centre conventions: ``"astra"`` puts the axis at ``(n − 1)/2`` (ASTRA, torch-radon, diffct: the
geometric centre of the grid); ``"skimage"`` at ``n // 2`` (scikit-image ``radon``/``iradon``); a
float is an explicit pixel index.

FBP angular weighting: ``"pi_over_2A"`` multiplies every projection by ``π/(2A)`` (scikit-image,
ASTRA; torch-radon's backprojection, which the reference used, is a plain sum, i.e. the same up to
a constant factor; it assumes a uniformly sampled 180° arc, so a 120° scan is over-weighted 1.5×);
``"quadrature"`` uses half the angular interval each projection actually covers (see
:meth:`Geometry.angle_weights`), so the weights of a limited arc sum to ``span/2`` instead of ``π/2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["CenterConvention", "Geometry", "Weighting", "WEDGE_GAP_FACTOR"]

CenterConvention = Literal["astra", "skimage"]
Weighting = Literal["pi_over_2A", "quadrature"]

#: In ``quadrature`` weighting, the largest angular gap is the missing wedge when it is wider than this many median gaps
#: (not an interval to integrate over): the projection next to it takes its other gap for that side.
WEDGE_GAP_FACTOR = 3.0

_WEIGHTINGS = ("pi_over_2A", "quadrature")


@dataclass(frozen=True)
class Geometry:
    """A parallel-beam scan of ``n × n`` slices (frozen, hashable).

    Attributes:
        n: slice edge in voxels (Y = X = n), >= 2.
        angles: projection angles in radians (any order, any range; duplicates allowed).
        det_count: detector columns D (default ``n``).
        det_spacing: detector column pitch in voxel units (default 1.0).
        center: ``"astra"`` (``(n − 1)/2``, default), ``"skimage"`` (``n // 2``) or a float pixel index.
        weighting: FBP angular weighting, ``"pi_over_2A"`` (default) or ``"quadrature"``.
    """

    n: int
    angles: tuple[float, ...]
    det_count: int | None = None
    det_spacing: float = 1.0
    center: CenterConvention | float = "astra"
    weighting: Weighting = "pi_over_2A"

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, (int, np.integer)) or self.n < 2:
            raise ValueError(f"Geometry.n must be an int >= 2, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        angles = _as_angle_tuple(self.angles)
        object.__setattr__(self, "angles", angles)
        det = self.n if self.det_count is None else self.det_count
        if isinstance(det, bool) or not isinstance(det, (int, np.integer)) or det < 2:
            raise ValueError(f"Geometry.det_count must be an int >= 2, got {self.det_count!r}")
        object.__setattr__(self, "det_count", int(det))
        sp = self.det_spacing
        if isinstance(sp, bool) or not isinstance(sp, (int, float)) or not math.isfinite(sp) or sp <= 0:
            raise ValueError(f"Geometry.det_spacing must be a finite number > 0, got {sp!r}")
        object.__setattr__(self, "det_spacing", float(sp))
        c = self.center
        if isinstance(c, str):
            if c not in ("astra", "skimage"):
                raise ValueError(f"Geometry.center must be 'astra', 'skimage' or a float, got {c!r}")
        elif isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ValueError(f"Geometry.center must be 'astra', 'skimage' or a finite float, got {c!r}")
        else:
            object.__setattr__(self, "center", float(c))
        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"Geometry.weighting must be one of {_WEIGHTINGS}, got {self.weighting!r}")

    # ------------------------------------------------------------------------------ constructors
    @classmethod
    def from_degrees(cls, n: int, angles_deg: Iterable[float], **kwargs: object) -> Geometry:
        """A geometry from angles in degrees; ``kwargs`` are the other fields."""
        deg = _as_angle_tuple(angles_deg)
        return cls(n=n, angles=tuple(math.radians(a) for a in deg), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def arc_degrees(
        cls, n: int, span_deg: float, step_deg: float = 1.0, offset_deg: float = 0.0, **kwargs: object
    ) -> Geometry:
        """Half-open tilt arc ``offset − span/2 + k·step`` for ``k·step < span`` (reference §3.3.1).

        ``span_deg=100`` with the default 1° step gives −50 … +49 (100 angles); ``span_deg=180``
        gives the usual full scan −90 … 89.
        """
        if not (math.isfinite(span_deg) and math.isfinite(step_deg) and math.isfinite(offset_deg)):
            raise ValueError("arc_degrees: span, step and offset must be finite")
        if step_deg <= 0 or span_deg < step_deg:
            raise ValueError(f"arc_degrees: need 0 < step <= span, got span={span_deg}, step={step_deg}")
        count = int(math.ceil(span_deg / step_deg - 1e-9))
        degs = [offset_deg - span_deg / 2 + k * step_deg for k in range(count)]
        return cls.from_degrees(n, degs, **kwargs)

    # -------------------------------------------------------------------------------- properties
    @property
    def n_angles(self) -> int:
        return len(self.angles)

    @property
    def detectors(self) -> int:
        """``det_count`` as a plain int (never None after construction)."""
        assert self.det_count is not None
        return self.det_count

    @property
    def image_center(self) -> float:
        """Pixel index of the rotation axis along y and x."""
        if self.center == "astra":
            return (self.n - 1) / 2.0
        if self.center == "skimage":
            return float(self.n // 2)
        return float(self.center)

    @property
    def det_center(self) -> float:
        """Detector column index (fractional) where the rotation axis is imaged."""
        return (self.detectors - 1) / 2.0 + (self.image_center - (self.n - 1) / 2.0) / self.det_spacing

    @property
    def circle_radius(self) -> float:
        """Radius (voxels) of the reconstruction circle around the axis: ``n // 2`` (as scikit-image)."""
        return float(self.n // 2)

    @property
    def angles_deg(self) -> tuple[float, ...]:
        return tuple(math.degrees(a) for a in self.angles)

    def angle_weights(self) -> np.ndarray:
        """FBP weight per projection, float64 shape (A,), in the order of :attr:`angles`.

        ``pi_over_2A``: ``π/(2A)`` each. ``quadrature``: ``Δθ_i / 2`` where ``Δθ_i`` is half the gap
        to each neighbour on the circle of angles modulo π (a projection at θ + π is the mirror of
        the one at θ). The largest gap, when it exceeds ``WEDGE_GAP_FACTOR`` × the median gap, is
        the missing wedge: the projection beside it uses its other gap for that side (so each end
        of a 120° arc at 1° steps gets 1°, and the weights sum to ``span/2``). Every other gap, however
        wide (projections missing inside the arc), is shared by its two neighbours. For a uniform
        180° scan both schemes agree.
        """
        a = len(self.angles)
        if self.weighting == "pi_over_2A" or a == 1:
            return np.full(a, math.pi / (2 * a))
        theta = np.mod(np.asarray(self.angles, dtype=np.float64), math.pi)
        order = np.argsort(theta, kind="stable")
        ts = theta[order]
        gaps_after = np.diff(np.concatenate([ts, ts[:1] + math.pi]))  # gap from i to i+1 (circular)
        gaps_before = np.roll(gaps_after, 1)
        median = float(np.median(gaps_after))
        wedge_after = np.zeros(a, dtype=bool)  # one missing wedge at most: the largest gap
        widest = int(np.argmax(gaps_after))
        wedge_after[widest] = gaps_after[widest] > WEDGE_GAP_FACTOR * median
        wedge_before = np.roll(wedge_after, 1)
        after = np.where(wedge_after, np.where(wedge_before, median, gaps_before), gaps_after)
        before = np.where(wedge_before, np.where(wedge_after, median, gaps_after), gaps_before)
        delta = 0.5 * (after + before)
        out = np.empty(a, dtype=np.float64)
        out[order] = delta / 2.0
        return out


def _as_angle_tuple(values: Iterable[float] | Sequence[float]) -> tuple[float, ...]:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()  # type: ignore[union-attr]
    try:
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Geometry.angles must be a sequence of numbers, got {values!r}") from exc
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"Geometry.angles must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("Geometry.angles must all be finite")
    return tuple(float(v) for v in arr)
