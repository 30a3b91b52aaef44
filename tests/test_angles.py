"""Limited-angle tilt series (reference §3.3)."""

from __future__ import annotations

import numpy as np
import pytest

from simaq_factory.acquisition.angles import AngleSet, max_angles, n_retained, sample_angles
from simaq_factory.recipe.fields import Dist


def draw(seed: int, span=Dist.uniform(90, 110), step=1.0, missing=0.2, jitter=0.1):
    return sample_angles(span=span, step_deg=step, missing_fraction=missing, jitter_deg=jitter,
                         offset=Dist.normal(0, 5, -15, 15), offset_below_span_deg=165.0,
                         rng=np.random.default_rng(seed))


def test_reference_series_for_span_100():
    a = draw(0, span=Dist.const(100), jitter=0.0, missing=0.0)
    nominal = np.asarray(a.recon_deg) - a.offset_deg
    np.testing.assert_allclose(nominal, np.arange(-50, 50), atol=1e-12)  # -50 ... +49, half-open
    assert a.n_nominal == 100 and -15 <= a.offset_deg <= 15 and a.offset_deg != 0


def test_missing_fraction_is_exact_and_kept_sorted():
    for seed in range(50):
        a = draw(seed)
        assert a.n_angles == a.n_nominal - int(a.n_nominal * 0.2)
        assert list(a.kept) == sorted(set(a.kept))
        assert a.n_angles <= max_angles(Dist.uniform(90, 110), 1.0, 0.2)


def test_jitter_statistics_and_recon_angles_are_unjittered():
    d = np.concatenate([np.subtract(draw(s).forward_deg, draw(s).recon_deg) for s in range(200)])
    assert abs(d.mean()) < 0.005 and abs(d.std() - 0.1) < 0.005


def test_no_offset_at_full_span_and_determinism():
    a = draw(3, span=Dist.const(180))
    assert a.offset_deg == 0.0
    assert draw(7) == draw(7) and draw(7) != draw(8)
    assert AngleSet.from_dict(draw(7).to_dict()) == draw(7)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.37, 0.9])
def test_retained_count_is_monotone_so_a_max_bounds_every_draw(fraction):
    counts = [n_retained(n, fraction) for n in range(1, 400)]
    assert all(b >= a for a, b in zip(counts, counts[1:]))


def test_fractional_spans_follow_the_half_open_rule_of_the_geometry():
    """k·step < span, as Geometry.arc_degrees: 100.3° at 1° is 101 angles, −50.15 … +49.85."""
    from simaq_factory.acquisition.angles import n_nominal
    from simaq_factory.tomo.geometry import Geometry

    for span, step in ((100.0, 1.0), (100.3, 1.0), (99.7, 1.0), (90.0, 0.5), (110.9, 2.0), (180.0, 1.0)):
        assert n_nominal(span, step) == Geometry.arc_degrees(8, span, step).n_angles
    assert n_nominal(100.3, 1.0) == 101 and n_nominal(100.0, 1.0) == 100


def test_offset_only_strictly_below_the_threshold_span():
    """The offset is drawn when span < offset_below_span_deg (165° here): not at 165° itself."""
    for seed in range(5):
        at = draw(seed, span=Dist.const(165.0), jitter=0.0, missing=0.0)
        assert at.offset_deg == 0.0
        np.testing.assert_allclose(at.recon_deg, -82.5 + np.arange(165), atol=1e-12)
        below = draw(seed, span=Dist.const(164.9), jitter=0.0, missing=0.0)
        assert below.offset_deg != 0.0 and -15.0 <= below.offset_deg <= 15.0
