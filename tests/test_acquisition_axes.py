"""simaq_factory.acquisition.axes against its module docstring: the seed streams of axes k >= 1 and
the frame table."""

from __future__ import annotations

import numpy as np
import pytest

from simaq_factory.acquisition.axes import axis_frame_record, axis_rng


@pytest.mark.parametrize("seed, index, position, axis", [(7, 3, 2, 1), (7, 3, 2, 2), (20251125, 0, 0, 1),
                                                         (5, 1, 4, 2)])
def test_axis_k_stream_is_the_kth_child_spawned_from_the_sample_stream(seed, index, position, axis):
    """Docstring: axis k >= 1 draws from the k-th child spawned from the stream's own SeedSequence
    (``SeedSequence(seed, spawn_key=(i, s))``)."""
    child = np.random.SeedSequence(seed, spawn_key=(index, position)).spawn(axis + 1)[axis]
    want = np.random.default_rng(child).random(6)
    assert np.array_equal(axis_rng(seed, index, position, axis).random(6), want)


def test_frame_records_follow_the_docstring_table():
    table = {0: ("z", "y", "x", [0, 1, 2]), 1: ("y", "x", "z", [1, 2, 0]), 2: ("x", "z", "y", [2, 0, 1])}
    for k, (tilt, beam, det, perm) in table.items():
        assert axis_frame_record(k) == {"axis": k, "tilt_axis": tilt, "beam_axis_at_0deg": beam,
                                        "detector_axis": det, "permutation": perm}
