"""One sample, end to end: a pure function of (recipe, sample index) and the device.

    seeds(recipe.seed, i) → sample_phantom → voxelize → phantom-space artifacts → angles →
    forward projection (jittered angles) → sinogram artifacts → reconstruction (nominal angles)

Each stage draws from its own generator, spawned from ``SeedSequence(seed, spawn_key=(i,))``, so a
stage's randomness does not shift when another stage changes, and sample ``i`` is the same whatever
shard, worker or order renders it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from simaq_factory.acquisition.angles import AngleSet, max_angles, sample_angles
from simaq_factory.acquisition.sinogram import apply_sinogram_artifacts, sample_sinogram_artifacts
from simaq_factory.artifacts import apply_artifacts, sample_artifacts
from simaq_factory.artifacts.stage import REFERENCE_VOXELS_PER_UNIT
from simaq_factory.phantom import sample_phantom, voxelize
from simaq_factory.recipe.model import Recipe
from simaq_factory.tomo import Geometry, forward_project, reconstruct

STREAMS = ("phantom", "artifacts", "angles", "sinogram")
INPUT_CIRCLE_PADDING = 2.0  # reference §3.2: project only inside radius n/2 − 2


def sample_rngs(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent generators for each stage of sample ``index``."""
    root = np.random.SeedSequence(seed, spawn_key=(index,))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, root.spawn(len(STREAMS)))}


def a_max_for(recipe: Recipe) -> int:
    acq = recipe.acquisition
    return max_angles(acq.tilt_span_deg, acq.step_deg, acq.missing_fraction)


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


_PINNED: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}


def to_host(t: torch.Tensor, key: str) -> np.ndarray:
    """Copy a tensor to host memory as numpy.

    From CUDA the copy goes through a page-locked buffer kept per (key, shape, dtype), several
    times faster than a pageable copy; the returned array is a view of that buffer and is valid
    until the next call with the same key in this process (callers copy it into their shard).
    """
    if t.device.type != "cuda":
        return t.numpy()
    k = (key, tuple(t.shape), t.dtype)
    buf = _PINNED.get(k)
    if buf is None:
        buf = _PINNED[k] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    buf.copy_(t)
    return buf.numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_sample(
    recipe: Recipe, index: int, device: torch.device
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Render sample ``index``. Returns host arrays (no sample axis) and its provenance record."""
    shape = recipe.dataset.shape
    n = shape[1]
    rngs = sample_rngs(recipe.seed, index)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        _sync(device)
        now = time.perf_counter()
        timings[name] = round(now - t, 5)
        t = now

    spec = sample_phantom(recipe.phantom, shape, rngs["phantom"])
    lap("phantom_sampling")
    phantom, labels = voxelize(spec, shape, device)
    lap("voxelization")
    # beads scale with the phantom: spec.scale is the voxels-per-unit actually used (it may shrink)
    art = sample_artifacts(recipe.artifacts, shape, labels, spec.scale, rngs["artifacts"])
    noisy = apply_artifacts(phantom, labels, art)
    lap("phantom_artifacts")

    angles = sample_angle_set(recipe, rngs["angles"])
    recon_cfg = recipe.reconstruction
    fwd_geom = Geometry(
        n=n, angles=tuple(math.radians(a) for a in angles.forward_deg), center=recon_cfg.center,
        weighting=recon_cfg.weighting,
    )
    volume_in = noisy * cylinder_mask(n, INPUT_CIRCLE_PADDING, device)
    proj = forward_project(volume_in, fwd_geom)
    lap("projection")
    sino_params = sample_sinogram_artifacts(
        recipe.acquisition.sinogram, angles.n_angles, rngs["sinogram"],
        voxel_length=REFERENCE_VOXELS_PER_UNIT / spec.scale,
    )
    proj = apply_sinogram_artifacts(proj, angles.forward_deg, sino_params)
    lap("sinogram_artifacts")
    rec_geom = Geometry(
        n=n, angles=tuple(math.radians(a) for a in angles.recon_deg), center=recon_cfg.center,
        weighting=recon_cfg.weighting,
    )
    recon = reconstruct(proj, rec_geom, recon_cfg)
    lap("reconstruction")

    outputs = recipe.dataset.outputs
    arrays: dict[str, np.ndarray] = {
        "phantom": to_host(phantom, "phantom"),
        "labels": to_host(labels, "labels"),
        "recon": to_host(recon.to(getattr(torch, outputs.recon_dtype)), "recon"),
    }
    if outputs.noisy:
        arrays["noisy"] = to_host(noisy.to(getattr(torch, outputs.noisy_dtype)), "noisy")
    if outputs.sinogram:
        arrays["sinogram"] = to_host(proj.float(), "sinogram")
    if outputs.angles:
        arrays["angles"] = np.asarray(angles.recon_deg, dtype=np.float32)
    lap("to_host")
    record = {
        "index": index,
        "seed": {"root": recipe.seed, "spawn_key": [index], "streams": list(STREAMS)},
        "phantom_spec": spec.to_dict(),
        "artifacts": art,
        "angles": angles.to_dict(),
        "sinogram_artifacts": sino_params,
        "n_cells": len(spec.cells),
        "timings_s": timings,
    }
    return arrays, record
