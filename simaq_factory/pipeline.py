"""One sample, end to end: a pure function of (recipe, sample index) and the device.

    seeds(recipe.seed, i) → sample_phantom → voxelize → phantom-space artifacts → for each
    acquisition axis: angles → forward projection (jittered angles) → sinogram artifacts →
    reconstruction (nominal angles)

``acquisition.axes: 3`` repeats the acquisition with z, y and x as the tilt axis, each with its own
draws (frames and seeding: :mod:`simaq_factory.acquisition.axes`).

Each stage draws from its own generator, spawned from ``SeedSequence(seed, spawn_key=(i,))``, so a
stage's randomness does not shift when another stage changes, and sample ``i`` is the same whatever
shard, worker or order renders it.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from simaq_factory.acquisition.angles import AngleSet, a_max_for, sample_angles
from simaq_factory.acquisition.axes import axis_frame_record, axis_rng, from_frame, tilt_axes, to_frame
from simaq_factory.acquisition.sinogram import (
    apply_sinogram_artifacts,
    project_tilted_axis,
    sample_sinogram_artifacts,
)
from simaq_factory.artifacts import NoiseBanks, apply_artifacts, memory_banks, sample_artifacts
from simaq_factory.artifacts.stage import REFERENCE_VOXELS_PER_UNIT
from simaq_factory.phantom import sample_phantom, voxelize
from simaq_factory.recipe.model import Recipe
from simaq_factory.seeding import STREAMS, sample_rngs  # noqa: F401 - STREAMS re-exported
from simaq_factory.tomo import Geometry, forward_project, reconstruct

INPUT_CIRCLE_PADDING = 2.0  # reference §3.2: project only inside radius n/2 − 2


def cylinder_mask(n: int, padding: float, device: torch.device) -> torch.Tensor:
    """Bool (n, n) disk of radius n/2 − padding centred at (n−1)/2 (the projector's centre)."""
    c = (n - 1) / 2.0
    r = torch.arange(n, device=device, dtype=torch.float32) - c
    return (r[:, None] ** 2 + r[None, :] ** 2) <= (n / 2.0 - padding) ** 2


def sample_angle_set(recipe: Recipe, rng: np.random.Generator) -> AngleSet:
    acq = recipe.acquisition
    return sample_angles(
        span=acq.tilt_span_deg,
        step_deg=acq.step_deg,
        missing_fraction=acq.missing_fraction,
        jitter_deg=acq.jitter_deg,
        offset=acq.offset_deg,
        offset_below_span_deg=acq.offset_below_span_deg,
        rng=rng,
    )


_HOST_SETS_LOCK = threading.Lock()
_FREE_HOST_SETS: list[dict] = []  # sets of page-locked buffers not bound to a thread now
_BOUND = threading.local()  # the set bound to this thread (host_buffers), else its own


@contextmanager
def host_buffers() -> Iterator[None]:
    """Bind one set of :func:`to_host`'s page-locked buffers to this thread for the block, taken
    from (and given back to) the process's pool: a Dask worker keeps as many sets as it runs CUDA
    tasks at once, not one per pool thread (its tasks move from thread to thread, and a set per
    thread held a 512³ sample's worth of locked memory, 0.9 GiB, for every thread)."""
    with _HOST_SETS_LOCK:
        buffers = _FREE_HOST_SETS.pop() if _FREE_HOST_SETS else {}
    before = getattr(_BOUND, "buffers", None)
    _BOUND.buffers = buffers
    try:
        yield
    finally:
        _BOUND.buffers = before
        with _HOST_SETS_LOCK:
            _FREE_HOST_SETS.append(buffers)


def to_host(t: torch.Tensor, key: str, *, view: bool = False) -> np.ndarray:
    """Copy a tensor to host memory as numpy.

    From CUDA the copy goes through a page-locked buffer per (key, dtype), grown to the largest
    size seen (one per key, however many sinogram lengths come by), several times faster than a
    pageable copy. The buffers are the set bound to this thread by :func:`host_buffers`, or
    outside one, a set of the thread's own. With ``view`` the result is a view of that buffer,
    valid until the next call with the same key in this thread or the end of the ``host_buffers``
    block (for callers that copy it into their shard at once); otherwise it is a copy of its own.
    """
    if t.device.type != "cuda":
        return t.numpy()
    buffers = getattr(_BOUND, "buffers", None)
    if buffers is None:
        buffers = _BOUND.buffers = {}
    buf = buffers.get((key, t.dtype))
    if buf is None or buf.numel() < t.numel():
        buf = buffers[(key, t.dtype)] = torch.empty(t.numel(), dtype=t.dtype, pin_memory=True)
    host = buf[: t.numel()].view(t.shape)
    host.copy_(t)
    return host.numpy() if view else host.numpy().copy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Acquisition:
    """One simulated tilt series and its reconstruction, in the frame of its tilt axis.

    ``proj`` is (A, S, D) and ``recon`` (S, Y', X') in the frame of ``axis``
    (:func:`simaq_factory.acquisition.axes.frame_axes`); ``from_frame`` maps ``recon`` to (z, y, x).
    """

    axis: int
    angles: AngleSet
    sino_params: dict[str, Any]
    proj: torch.Tensor
    recon: torch.Tensor


class NonFiniteData(ValueError):
    """A stage gave inf or NaN: values of the recipe (LACs, thicknesses, strengths) too large for
    float32. The recipe, seed and index decide it: a re-run fails the same way."""


def _check_finite(t: torch.Tensor, what: str, axis: int) -> None:
    # a sum is inf or NaN whenever an element is (inf + -inf is NaN): one reduction, no boolean copy of
    # the volume (isfinite(t).all() took 74 ms of a 2.9 s 256³ sample on 2 cores; this takes 3.4 ms)
    if not bool(torch.isfinite(t.sum())):
        raise NonFiniteData(
            f"the {what} (axis {axis}) holds inf or NaN: a LAC, thickness or artifact strength of the "
            "recipe is too large for float32 (phantom.*.lac, acquisition.sinogram.ice_thickness, "
            "artifacts.*); `simaq-factory validate` prints the resolved values"
        )


def acquire(
    recipe: Recipe,
    noisy: torch.Tensor,
    axis: int,
    angle_rng: np.random.Generator,
    sino_rng: np.random.Generator,
    voxel_length: float,
    lap: Callable[[str], None],
    banks: NoiseBanks,
) -> Acquisition:
    """Sample angles, project ``noisy`` (z, y, x) about volume ``axis``, add sinogram artifacts and
    reconstruct (reference §3.2–3.9). ``lap(stage)`` is called after each timed stage."""
    n = recipe.dataset.shape[1]
    device = noisy.device
    angles = sample_angle_set(recipe, angle_rng)
    recon_cfg = recipe.reconstruction
    fwd_geom = Geometry(
        n=n, angles=tuple(math.radians(a) for a in angles.forward_deg), center=recon_cfg.center,
        weighting=recon_cfg.weighting,
    )
    # a cyclic permutation puts the tilt axis first; the input cylinder is then about that axis
    volume_in = (to_frame(noisy, axis) * cylinder_mask(n, INPUT_CIRCLE_PADDING, device)).contiguous()
    # drawn before projecting (its own stream: the order of the calls changes no draw), because a
    # misaligned series is projected about a tilted axis
    sino_params = sample_sinogram_artifacts(
        recipe.acquisition.sinogram, angles.n_angles, sino_rng, voxel_length=voxel_length,
        flicker_entries=recipe.artifacts.banks.perlin_lo_2d.entries,
    )
    tilt = float(sino_params["misalignment"].get("axis_tilt_deg", 0.0))
    backend = recipe.execution.projector
    proj = project_tilted_axis(volume_in, fwd_geom, tilt, functools.partial(forward_project, backend=backend))
    del volume_in
    lap("projection")
    proj = apply_sinogram_artifacts(proj, angles.forward_deg, sino_params, banks["perlin_lo_2d"])
    _check_finite(proj, "sinogram", axis)
    lap("sinogram_artifacts")
    rec_geom = Geometry(
        n=n, angles=tuple(math.radians(a) for a in angles.recon_deg), center=recon_cfg.center,
        weighting=recon_cfg.weighting,
    )
    recon = reconstruct(proj, rec_geom, recon_cfg, backend=backend)
    _check_finite(recon, "reconstruction", axis)
    lap("reconstruction")
    return Acquisition(axis=axis, angles=angles, sino_params=sino_params, proj=proj, recon=recon)


def acquisition_rngs(
    recipe: Recipe, index: int, rngs: dict[str, np.random.Generator]
) -> list[tuple[np.random.Generator, np.random.Generator]]:
    """(angles, sinogram) generators of each acquisition axis of sample ``index``.

    Axis 0 uses the sample's own ``angles`` / ``sinogram`` streams (exactly as a one-axis recipe);
    axis k ≥ 1 the k-th child of each (:func:`simaq_factory.acquisition.axes.axis_rng`).
    """
    out = [(rngs["angles"], rngs["sinogram"])]
    for k in tilt_axes(recipe.acquisition.axes)[1:]:
        out.append(tuple(axis_rng(recipe.seed, index, STREAMS.index(s), k)  # type: ignore[misc]
                         for s in ("angles", "sinogram")))
    return out


def _stack_padded(acqs: list[Acquisition], a_max: int) -> tuple[torch.Tensor, np.ndarray]:
    """(axes, A_max, S, D) float32 projections and (axes, A_max) angles, NaN past each count."""
    first = acqs[0].proj
    proj = torch.full((len(acqs), a_max, *first.shape[1:]), float("nan"), dtype=torch.float32,
                      device=first.device)
    angles = np.full((len(acqs), a_max), np.nan, dtype=np.float32)
    for k, acq in enumerate(acqs):
        a = acq.angles.n_angles
        proj[k, :a] = acq.proj
        angles[k, :a] = np.asarray(acq.angles.recon_deg, dtype=np.float32)
    return proj, angles


def _check_render_args(recipe: Recipe, index: Any, device: torch.device | str) -> torch.device:
    """``render_sample``'s index (negative: NumPy's "expected non-negative integer" without a name;
    past the dataset: rendered without a word) and device (a string failed after the phantom was
    sampled) as a ``BadInput`` naming each; the device resolved."""
    from simaq_factory.device import resolve_device
    from simaq_factory.errors import BadInput

    n = recipe.dataset.n_samples
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise BadInput("index", f"must be an int from 0 to dataset.n_samples - 1 = {n - 1}, got {index!r}")
    if isinstance(device, torch.device):  # checked as a name: torch.device("cpu", 0) prints "cpu:0"
        device = "cpu" if device.type == "cpu" else str(device)
    return resolve_device(device, "device")


def render_sample(
    recipe: Recipe, index: int, device: torch.device | str, *, banks: NoiseBanks | None = None,
    host_views: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Render sample ``index``. Returns host arrays (no sample axis) and its provenance record.

    ``index``: 0 … ``dataset.n_samples`` − 1; ``device``: a ``torch.device`` or ``"auto"``,
    ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (resolved as ``execution.device`` is). Either wrong is a
    ``ValueError`` (``BadInput``) naming it, before any work.
    ``banks``: the dataset's noise banks on ``device`` (``store.banks.load_banks``); when omitted
    they are generated in memory from the recipe, once per process (``memory_banks``).
    ``host_views``: on CUDA, return views of this thread's page-locked buffers (:func:`to_host`),
    overwritten by the next call, for a caller that copies them at once; by default the arrays
    are the caller's own.
    """
    device = _check_render_args(recipe, index, device)
    shape = recipe.dataset.shape
    rngs = sample_rngs(recipe.seed, index)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        _sync(device)
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - t, 5)  # summed over axes
        t = now

    spec = sample_phantom(recipe.phantom, shape, rngs["phantom"])
    lap("phantom_sampling")
    phantom, labels = voxelize(spec, shape, device)
    lap("voxelization")
    # beads scale with the phantom: spec.scale is the voxels-per-unit actually used (it may shrink)
    art = sample_artifacts(recipe.artifacts, shape, labels, spec.scale, rngs["artifacts"],
                           texture_cylinder=len(tilt_axes(recipe.acquisition.axes)) == 1)
    if banks is None:
        banks = memory_banks(recipe.artifacts, tuple(shape), recipe.seed, device)
    noisy = apply_artifacts(phantom, labels, art, banks)
    lap("phantom_artifacts")

    voxel_length = REFERENCE_VOXELS_PER_UNIT / spec.scale
    acqs = [
        acquire(recipe, noisy, axis, angle_rng, sino_rng, voxel_length, lap, banks)
        for axis, (angle_rng, sino_rng) in enumerate(acquisition_rngs(recipe, index, rngs))
    ]

    outputs = recipe.dataset.outputs
    arrays: dict[str, np.ndarray] = {
        "phantom": to_host(phantom, "phantom", view=host_views),
        "labels": to_host(labels, "labels", view=host_views),
    }
    recon_dtype = getattr(torch, outputs.recon_dtype)
    if len(acqs) == 1:
        arrays["recon"] = to_host(acqs[0].recon.to(recon_dtype), "recon", view=host_views)
    else:  # (axes, Z, Y, X): every reconstruction back in the canonical (z, y, x) orientation
        arrays["recon"] = to_host(
            torch.stack([from_frame(a.recon, a.axis).to(recon_dtype) for a in acqs]), "recon", view=host_views
        )
    if outputs.noisy:
        arrays["noisy"] = to_host(noisy.to(getattr(torch, outputs.noisy_dtype)), "noisy", view=host_views)
    if len(acqs) == 1:
        if outputs.sinogram:
            arrays["sinogram"] = to_host(acqs[0].proj.float(), "sinogram", view=host_views)
        if outputs.angles:
            arrays["angles"] = np.asarray(acqs[0].angles.recon_deg, dtype=np.float32)
    elif outputs.sinogram or outputs.angles:
        stacked, angle_rows = _stack_padded(acqs, a_max_for(recipe))
        if outputs.sinogram:
            arrays["sinogram"] = to_host(stacked, "sinogram", view=host_views)
        if outputs.angles:
            arrays["angles"] = angle_rows
    lap("to_host")
    record: dict[str, Any] = {
        "index": index,
        "seed": {"root": recipe.seed, "spawn_key": [index], "streams": list(STREAMS)},
        "phantom_spec": spec.to_dict(),
        "artifacts": art,
        "angles": acqs[0].angles.to_dict(),
        "sinogram_artifacts": acqs[0].sino_params,
        "n_cells": len(spec.cells),
        "timings_s": timings,
    }
    if len(acqs) > 1:  # "angles" / "sinogram_artifacts" above are axis 0's; every axis's here
        record["seed"]["axis_spawn_keys"] = {
            str(a.axis): {s: [index, STREAMS.index(s), a.axis] for s in ("angles", "sinogram")}
            for a in acqs[1:]
        }
        record["acquisitions"] = [
            {**axis_frame_record(a.axis), "angles": a.angles.to_dict(), "sinogram_artifacts": a.sino_params}
            for a in acqs
        ]
    return arrays, record
