"""Filtered backprojection (reference-simaq §3.8–3.9, design §8)."""

from __future__ import annotations

import logging

import torch

from simaq_factory.tomo.filters import filter_projections
from simaq_factory.tomo.geometry import Geometry
from simaq_factory.tomo.projector import DEFAULT_CHUNK_BYTES, _check_proj, backproject_table

__all__ = ["fbp"]

logger = logging.getLogger(__name__)

# Filtered values are kept for this many virtual columns beyond each detector edge, so pixels whose
# ray falls between the last column and the edge interpolate instead of dropping to 0 (scikit-image
# does the same by filtering a zero-padded sinogram).
_EXTEND = 1


def fbp(
    proj: torch.Tensor,
    geom: Geometry,
    *,
    filter: str = "ram-lak",
    clip_circle: bool = True,
    pad_to: int | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    backend: str = "torch",
) -> torch.Tensor:
    """Filtered backprojection of a projection stack.

    Steps: zero-pad and filter each detector row (:func:`filter_projections`; the ramp is divided by
    ``det_spacing`` so values stay in voxel⁻¹ units), backproject with linear interpolation, weight
    every angle per ``geom.weighting`` (:meth:`Geometry.angle_weights`), and leave voxels outside the
    reconstruction circle at 0 when ``clip_circle``.

    Args:
        proj: (A, Z, D) floating tensor of line integrals (voxel units), any device; float16 and
            bfloat16 are filtered and backprojected in float32 (the FFT has no half-precision CPU
            path) and the result cast back.
        geom: the scan geometry (angles, centre, weighting).
        filter: one of :data:`simaq_factory.tomo.filters.FILTER_NAMES`.
        clip_circle: zero outside the inscribed circle (radius ``n // 2`` around the axis).
        pad_to: FFT length override (default ``max(64, next pow2 >= 2D)``; scikit-image's
            ``iradon(circle=True)`` uses :func:`~simaq_factory.tomo.filters.skimage_padded_size`).
        max_chunk_bytes: bound on backprojection temporaries.
        backend: the backprojector, ``"torch"``, ``"triton"`` or ``"auto"``
            (:func:`~simaq_factory.tomo.projector.use_kernels`).

    Returns:
        (Z, Y, X) reconstruction, same dtype/device as ``proj``; for a full 180° scan with
        ``pi_over_2A`` weighting it approximates the attenuation per voxel length.
    """
    _check_proj(proj, geom)
    half = proj.dtype in (torch.float16, torch.bfloat16)
    work = proj.float() if half else proj
    filtered = filter_projections(work, filter, pad_to=pad_to, extend=_EXTEND)
    if geom.det_spacing != 1.0:
        filtered.mul_(1.0 / geom.det_spacing)
    weights = torch.as_tensor(geom.angle_weights(), dtype=work.dtype, device=work.device)
    recon = backproject_table(
        filtered,
        geom,
        geom.det_center + _EXTEND,
        clip_circle=clip_circle,
        angle_weights=weights,
        max_chunk_bytes=max_chunk_bytes,
        backend=backend,
    )
    return recon.to(proj.dtype) if half else recon
