"""Apollonian packing (phantom/apollonian.py): argument check and the copies it hands out."""

from __future__ import annotations

import numpy as np
import pytest

from simaq_factory.phantom.apollonian import apollonian_packing


@pytest.mark.parametrize("depth", [-1, -3])
def test_negative_depth_is_refused(depth: int) -> None:
    with pytest.raises(ValueError, match="depth"):
        apollonian_packing(depth)


def test_callers_may_modify_the_returned_arrays() -> None:
    c0, r0 = apollonian_packing(2)
    want_c, want_r = c0.copy(), r0.copy()
    c0[:] = 7.0  # what a caller scaling the packing in place would do
    r0 *= 3.0
    c1, r1 = apollonian_packing(2)
    np.testing.assert_array_equal(c1, want_c)
    np.testing.assert_array_equal(r1, want_r)


def test_generations_are_appended_in_order_and_shrink() -> None:
    """Depth d's list starts with depth d−1's list (the base spheres first), and every new sphere is
    smaller than the largest sphere of the generation before."""
    prev_c, prev_r = apollonian_packing(0)
    for depth in (1, 2, 3):
        c, r = apollonian_packing(depth)
        np.testing.assert_allclose(c[: len(prev_r)], prev_c, atol=1e-12)
        np.testing.assert_allclose(r[: len(prev_r)], prev_r, atol=1e-12)
        assert r[len(prev_r):].max() < prev_r.max()
        prev_c, prev_r = c, r
