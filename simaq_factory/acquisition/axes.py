"""Acquisitions about one or three principal axes of a phantom (paper §2; reference-simaq §3.11).

The paper trains on phantoms forward- and back-projected "along all three principal axes" with
independently sampled acquisition parameters; the released code used one axis. ``acquisition.axes``
chooses 1 (the reference, volume axis 0 = z is the tilt axis) or 3 (z, y and x in turn).

Frames. The projector's frame is ``(tilt, beam at 0°, detector)``: it rotates about axis 0 of the
volume it is given, at 0° its rays travel along axis 1 and the detector runs along axis 2. The
acquisition about volume axis ``k`` (0 = z, 1 = y, 2 = x) sees the volume permuted by the cyclic
:func:`frame_axes` ``(k, k+1, k+2) mod 3``:

====  ==========  =================  ==========  ==========================
k     tilt axis   beam at 0°         detector    permutation of (z, y, x)
====  ==========  =================  ==========  ==========================
0     z           y                  x           (0, 1, 2) — the reference
1     y           x                  z           (1, 2, 0)
2     x           z                  y           (2, 0, 1)
====  ==========  =================  ==========  ==========================

Cyclic permutations are proper rotations (no mirror), so a positive tilt angle turns the object
the same way (right-handed) about each axis. Its projections are stored as they are made,
``(A, S, D)`` with ``S`` along axis ``k`` and ``D`` along the detector axis of the table; its
reconstruction is permuted back (:func:`inverse_axes`) so voxel ``(z, y, x)`` of every stored volume
is the same place in the phantom.

Randomness. Axis 0 draws its angles and sinogram artifacts from the sample's ``angles`` and
``sinogram`` streams exactly as a one-axis recipe does (so axis 0 of a three-axis dataset is the
acquisition the one-axis recipe would make). Axis ``k ≥ 1`` draws from
``SeedSequence(seed, spawn_key=(i, s, k))`` where ``s`` is the stream's position in
:data:`simaq_factory.seeding.STREAMS` — the ``k``-th child spawned from that stream's own
SeedSequence — so each axis is an independent, reproducible draw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "AXIS_NAMES",
    "axis_frame_record",
    "axis_rng",
    "frame_axes",
    "from_frame",
    "inverse_axes",
    "tilt_axes",
    "to_frame",
]

#: Names of the volume axes 0, 1, 2 (a volume is indexed (z, y, x)).
AXIS_NAMES = ("z", "y", "x")

_T = TypeVar("_T", "torch.Tensor", np.ndarray)  # torch is not imported to read a dataset's frames


def _check_axis(axis: int) -> int:
    if isinstance(axis, bool) or int(axis) != axis or not 0 <= axis <= 2:
        raise ValueError(f"axis must be 0 (z), 1 (y) or 2 (x), got {axis!r}")
    return int(axis)


def tilt_axes(n_axes: int) -> list[int]:
    """The volume axes used as tilt axes: ``[0]`` for one axis, ``[0, 1, 2]`` for three."""
    if n_axes not in (1, 3):
        raise ValueError(f"acquisition.axes must be 1 or 3, got {n_axes!r}")
    return list(range(n_axes))


def frame_axes(axis: int) -> tuple[int, int, int]:
    """Volume axes ``(tilt, beam at 0°, detector)`` of the acquisition about ``axis``."""
    k = _check_axis(axis)
    return (k, (k + 1) % 3, (k + 2) % 3)


def inverse_axes(axis: int) -> tuple[int, int, int]:
    """The permutation that takes a volume in the frame of ``axis`` back to (z, y, x)."""
    perm = frame_axes(axis)
    inv = [0, 0, 0]
    for i, p in enumerate(perm):
        inv[p] = i
    return (inv[0], inv[1], inv[2])


def _permute(volume: _T, perm: tuple[int, int, int]) -> _T:
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) volume, got shape {tuple(volume.shape)}")
    if isinstance(volume, np.ndarray):
        return np.transpose(volume, perm)
    return volume.permute(perm)


def to_frame(volume: _T, axis: int) -> _T:
    """View of a (z, y, x) volume in the frame of the acquisition about ``axis`` (no copy)."""
    return _permute(volume, frame_axes(axis))


def from_frame(volume: _T, axis: int) -> _T:
    """View of a volume in the frame of ``axis`` back in (z, y, x) (no copy)."""
    return _permute(volume, inverse_axes(axis))


def axis_rng(seed: int, index: int, stream_position: int, axis: int) -> np.random.Generator:
    """The generator of stream ``stream_position`` for acquisition ``axis`` ≥ 1 of sample ``index``."""
    k = _check_axis(axis)
    if k == 0:
        raise ValueError("axis 0 uses the sample's own stream (seeding.sample_rngs)")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, stream_position, k)))


def axis_frame_record(axis: int) -> dict[str, Any]:
    """The JSON description of an axis's frame, for provenance records and the dataset card."""
    tilt, beam, det = frame_axes(axis)
    return {
        "axis": tilt,
        "tilt_axis": AXIS_NAMES[tilt],
        "beam_axis_at_0deg": AXIS_NAMES[beam],
        "detector_axis": AXIS_NAMES[det],
        "permutation": [tilt, beam, det],
    }
