"""Limited-angle tilt series: span, step, global offset, missing projections, jitter.

Reference §3.3: nominal angles θ_k = −span/2 + k·step (k = 0 … n−1, half-open, n = round(span/step));
when span < ``offset_below_span_deg`` a common offset clip(N(0, 5°), −15°, 15°) shifts the series
(asymmetric tilt ranges); exactly int(n·missing_fraction) angles are removed uniformly at random; the
forward projection uses the retained angles plus i.i.d. N(0, jitter²) noise, while the
reconstruction only knows the retained (un-jittered) angles — as an experimenter knows the
goniometer's nominal angles but not its errors. All angles are in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simaq_factory.recipe.fields import Dist


@dataclass(frozen=True)
class AngleSet:
    """One sampled tilt series (degrees). ``recon_deg`` and ``forward_deg`` have equal length."""

    span_deg: float
    step_deg: float
    offset_deg: float
    n_nominal: int
    kept: tuple[int, ...]  # indices into the nominal series, ascending
    recon_deg: tuple[float, ...]  # retained nominal angles + offset: what the reconstruction uses
    forward_deg: tuple[float, ...]  # recon_deg + jitter: what the projector used

    @property
    def n_angles(self) -> int:
        return len(self.recon_deg)

    def to_dict(self) -> dict[str, Any]:
        return {
            "span_deg": self.span_deg,
            "step_deg": self.step_deg,
            "offset_deg": self.offset_deg,
            "n_nominal": self.n_nominal,
            "kept": list(self.kept),
            "recon_deg": list(self.recon_deg),
            "forward_deg": list(self.forward_deg),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AngleSet:
        return cls(
            span_deg=float(d["span_deg"]),
            step_deg=float(d["step_deg"]),
            offset_deg=float(d["offset_deg"]),
            n_nominal=int(d["n_nominal"]),
            kept=tuple(int(i) for i in d["kept"]),
            recon_deg=tuple(float(a) for a in d["recon_deg"]),
            forward_deg=tuple(float(a) for a in d["forward_deg"]),
        )


def n_nominal(span_deg: float, step_deg: float) -> int:
    """Number of nominal angles of the half-open series ``−span/2 + k·step`` for ``k·step < span``
    (reference §3.3; as :meth:`Geometry.arc_degrees`): 100 for 100° at 1°, 101 for 100.3°."""
    return max(1, int(math.ceil(span_deg / step_deg - 1e-9)))


def n_retained(n: int, missing_fraction: float) -> int:
    """Angles left after removing exactly int(n·missing_fraction) of ``n`` (non-decreasing in n)."""
    return n - int(n * missing_fraction)


def max_angles(span: Dist, step_deg: float, missing_fraction: float) -> int:
    """Largest number of retained angles any draw of ``span`` can give (``A_max`` on disk)."""
    hi = span.support()[1]
    if not math.isfinite(hi):
        raise ValueError("tilt span distribution must be bounded above")
    return n_retained(n_nominal(hi, step_deg), missing_fraction)


def sample_angles(
    *,
    span: Dist,
    step_deg: float,
    missing_fraction: float,
    jitter_deg: float,
    offset: Dist,
    offset_below_span_deg: float,
    rng: np.random.Generator,
) -> AngleSet:
    """Draw one tilt series; every random choice comes from ``rng``."""
    span_deg = float(span.sample(rng))
    n = n_nominal(span_deg, step_deg)
    nominal = -span_deg / 2.0 + step_deg * np.arange(n, dtype=np.float64)
    offset_deg = float(offset.sample(rng)) if span_deg < offset_below_span_deg else 0.0
    n_keep = n_retained(n, missing_fraction)
    kept = np.sort(rng.choice(n, size=n_keep, replace=False)) if n_keep < n else np.arange(n)
    recon = nominal[kept] + offset_deg
    jitter = rng.normal(0.0, jitter_deg, size=n_keep) if jitter_deg > 0 else np.zeros(n_keep)
    forward = recon + jitter
    return AngleSet(
        span_deg=span_deg,
        step_deg=float(step_deg),
        offset_deg=offset_deg,
        n_nominal=n,
        kept=tuple(int(i) for i in kept),
        recon_deg=tuple(float(a) for a in recon),
        forward_deg=tuple(float(a) for a in forward),
    )


def a_max_for(recipe: Any) -> int:
    """The angle axis of a dataset's sinogram arrays: the most projections ``recipe``'s acquisition
    can produce (shorter tilt series are padded)."""
    acq = recipe.acquisition
    return max_angles(acq.tilt_span_deg, acq.step_deg, acq.missing_fraction)
