"""Phantom-space artifact stage: sample parameters, then apply them (reference §2.1–§2.5).

Order (§2.1): background mask M (on the clean phantom, before anything else), Gaussian blur of the
whole volume, fiducial beads (voxels set, not added), ice cracks × low-frequency Perlin noise added
on M, high-frequency Perlin ice texture added on M ∩ inscribed cylinder. The clean phantom is left
untouched; a new "noisy" volume is returned.

``sample_artifacts`` draws everything random into a JSON-able dict: which noise-bank entries the
volume uses and how each is oriented and cropped (:mod:`simaq_factory.artifacts.assemble`);
``apply_artifacts`` is deterministic given that dict and the banks, and runs on the phantom's device.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from simaq_factory.artifacts.assemble import crack_field, place, sample_placement, unit_range
from simaq_factory.artifacts.banks import NoiseBanks
from simaq_factory.artifacts.blur import blur_kernel_1d, effective_sigma, gaussian_blur_3d, kernel_radius, kernel_std
from simaq_factory.artifacts.config import ArtifactsConfig, crack_block_edge
from simaq_factory.artifacts.fiducials import paint_beads, sample_fiducials

logger = logging.getLogger(__name__)

__all__ = ["sample_artifacts", "apply_artifacts", "background_mask", "cylinder_mask"]

REFERENCE_VOXELS_PER_UNIT = 1.2  # reference §1.2: 512³ volumes, 1.2 voxels per generation unit


def background_mask(phantom: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """M of §2.1: voxels empty in the clean phantom and unlabelled (bool, (Z, Y, X))."""
    return (phantom == 0) & (labels == 0)


def cylinder_mask(shape: tuple[int, int, int], padding: float, device: torch.device) -> torch.Tensor:
    """Inscribed cylinder along z: circle in (y, x) of radius min(Y, X)/2 − padding.

    Centre ((Y − 1)/2, (X − 1)/2), the projector's rotation centre. Returns bool (1, Y, X).
    """
    _, ny, nx = shape
    yy = torch.arange(ny, dtype=torch.float64, device=device) - (ny - 1) / 2.0
    xx = torch.arange(nx, dtype=torch.float64, device=device) - (nx - 1) / 2.0
    radius = min(ny, nx) / 2.0 - float(padding)
    return (yy[:, None] ** 2 + xx[None, :] ** 2 <= radius * radius)[None]


def sample_artifacts(
    cfg: ArtifactsConfig,
    shape: tuple[int, int, int] | torch.Size,
    labels: torch.Tensor,
    voxels_per_unit: float,
    rng: np.random.Generator,
    *,
    texture_cylinder: bool = True,
) -> dict[str, Any]:
    """Draw the phantom-space artifact parameters for one volume.

    Args:
        cfg: the ``artifacts`` recipe section.
        shape: the volume shape (Z, Y, X); must equal ``labels.shape``.
        labels: (Z, Y, X) uint8 label volume (any device); beads are placed away from labels ≠ 0.
        voxels_per_unit: phantom scale, voxels per generation unit (reference 1.2 at 512³, §1.2).
        rng: the sample's generator. Each sub-stage draws from its own spawned child, so changing
            one sub-stage's settings does not change the others' draws.
        texture_cylinder: confine the ice texture to the inscribed cylinder about z (§2.5). With
            one acquisition axis that cylinder is the projector's input mask, so it changes only
            the stored noisy volume; with three axes the acquisitions about y and x have their own
            cylinders, and a texture cut off about z would leave a sharp edge inside their fields
            of view, so the pipeline turns it off there (each frame's input mask still clips).

    Returns:
        JSON-able ``{"shape", "blur", "fiducials", "ice_cracks", "perlin"}``; see
        :func:`apply_artifacts`.
    """
    if labels.ndim != 3 or tuple(int(v) for v in shape) != tuple(labels.shape):
        raise ValueError(f"labels must be (Z, Y, X) = {tuple(shape)}, got shape {tuple(labels.shape)}")
    vol = tuple(int(s) for s in labels.shape)
    rng_blur, rng_beads, rng_perlin, rng_cracks = rng.spawn(4)

    b = cfg.blur
    apply_blur = bool(rng_blur.random() < b.probability)
    sigma_drawn = float(b.sigma.sample(rng_blur))
    # the nominal σ of the reference's truncated kernel → the σ that kernel really applies (bug 12)
    sigma_ref = sigma_drawn if b.nominal_taps is None else effective_sigma(sigma_drawn, b.nominal_taps)
    # σ is in reference voxels (1/1.2 generation units) and converted to this volume's voxels
    sigma = sigma_ref * float(voxels_per_unit) / REFERENCE_VOXELS_PER_UNIT
    # a kernel sized from σ is the discrete Gaussian, whose variance is σ² also below a voxel (a
    # sampled one vanished there: 64³ and 128³ volumes were barely blurred), at least 5 taps (below
    # σ = 0.67 the 3 taps of ceil(3σ) cut up to 9 % of its variance); a fixed kernel_size reproduces
    # the reference's sampled 5³ kernel. Records without "kernel" were sampled.
    kernel = "sampled" if b.kernel_size is not None else "discrete"
    radius = kernel_radius(sigma, b.truncate, b.kernel_size)
    if kernel == "discrete":
        radius = max(2, radius)
    blur = {
        "applied": apply_blur,
        "sigma_drawn": sigma_drawn,
        "sigma_reference_voxels": sigma_ref,
        "sigma": sigma,
        "radius": radius,
        "kernel": kernel,
        "sigma_applied": kernel_std(blur_kernel_1d(sigma, radius, kernel)),  # per axis, after the cut
    }

    fiducials = sample_fiducials(cfg.fiducials, labels, voxels_per_unit, rng_beads)

    c = cfg.ice_cracks
    banks = cfg.banks
    apply_cracks = bool(rng_cracks.random() < c.probability)
    amplitude_c = float(c.amplitude.sample(rng_cracks))
    edge = crack_block_edge(banks.cracks, vol)
    ice_cracks = {
        "applied": bool(apply_cracks and amplitude_c > 0.0),
        "amplitude": amplitude_c,
        "layers": [
            sample_placement(rng_cracks, banks.cracks.entries, edge, vol, c.crop) for _ in range(c.layers)
        ],
        "modulation": sample_placement(
            rng_cracks, banks.perlin_lo_3d.entries, banks.perlin_lo_3d.edge, vol, 1.0
        ),
    }

    p = cfg.perlin
    amplitude = float(p.amplitude.sample(rng_perlin))
    hi = banks.perlin_hi_3d
    perlin = {
        "applied": bool(p.enabled and amplitude > 0.0),
        "amplitude": amplitude,
        "cylinder_padding": p.cylinder_padding if texture_cylinder else None,
        "placement": sample_placement(rng_perlin, hi.entries, hi.edge, vol, 1.0),
    }
    return {
        "shape": list(vol),
        "blur": blur,
        "fiducials": fiducials,
        "ice_cracks": ice_cracks,
        "perlin": perlin,
    }


def apply_artifacts(
    phantom: torch.Tensor,
    labels: torch.Tensor,
    params: dict[str, Any],
    banks: NoiseBanks | None = None,
) -> torch.Tensor:
    """Apply sampled phantom-space artifacts; no randomness.

    Args:
        phantom: clean LAC volume (Z, Y, X) float32; not modified.
        labels: (Z, Y, X) uint8 labels on the same device.
        params: the dict from :func:`sample_artifacts` (or its JSON round-trip).
        banks: the dataset's noise banks on the phantom's device; needed when cracks or the
            texture are applied.

    Returns:
        The noisy volume, (Z, Y, X) float32 on ``phantom.device``.
    """
    shape = tuple(int(s) for s in phantom.shape)
    if list(shape) != list(params["shape"]) or tuple(labels.shape) != shape:
        raise ValueError(
            f"phantom {shape} / labels {tuple(labels.shape)} do not match params shape {params['shape']}"
        )
    cracks, p = params["ice_cracks"], params["perlin"]
    if banks is None and (cracks["applied"] or p["applied"]):
        raise ValueError("ice cracks and the Perlin texture need the dataset's noise banks")

    blur = params["blur"]
    if blur["applied"]:
        noisy = gaussian_blur_3d(phantom, float(blur["sigma"]), int(blur["radius"]), blur.get("kernel", "sampled"))
    else:
        noisy = phantom.float().clone()

    paint_beads(noisy, params["fiducials"]["beads"])

    dev = phantom.device
    terms: list[tuple[torch.Tensor, float]] = []
    if cracks["applied"]:
        assert banks is not None
        field = crack_field(banks["cracks"].to(dev), banks["perlin_lo_3d"].to(dev), cracks["layers"],
                            cracks["modulation"], shape)
        terms.append((field, float(cracks["amplitude"])))
    cyl = None
    if p["applied"]:
        assert banks is not None
        # min-max normalised where it is used (reference §2.5): a non-cubic volume's box of the bank
        # cube spans less than [0, 1] (a (16, 64, 64) box 0.83 at worst, with an offset)
        texture = unit_range(place(banks["perlin_hi_3d"].to(dev), p["placement"], shape))
        terms.append((texture, float(p["amplitude"])))
        if p["cylinder_padding"] is not None:  # None: no cylinder (three acquisition axes)
            cyl = cylinder_mask(shape, float(p["cylinder_padding"]), dev)  # type: ignore[arg-type]
    if terms:
        _add_masked(noisy, phantom, labels, terms, cyl)
    return noisy


def _add_masked(
    noisy: torch.Tensor,
    phantom: torch.Tensor,
    labels: torch.Tensor,
    terms: list[tuple[torch.Tensor, float]],
    cyl: torch.Tensor | None,
) -> None:
    """noisy += a·F·M for each (F, a) of ``terms``, the last one (the texture, when ``cyl`` is given)
    masked by M ∩ cylinder instead; M is the background of the clean phantom (§2.1).

    The fields are multiplied in place (they are this stage's temporaries). On the CPU the volume is
    walked in z-slabs so the mask and products stay in cache: the same operations per voxel as
    whole-volume calls, less memory traffic (256³: 0.15 → 0.07 s).
    """
    nz, ny, nx = noisy.shape
    slab = nz if noisy.device.type != "cpu" else max(1, _MASK_SLAB_VOXELS // (ny * nx))
    for z0 in range(0, nz, slab):
        z = slice(z0, z0 + slab)
        mask = background_mask(phantom[z], labels[z])
        for k, (field, amplitude) in enumerate(terms):
            if cyl is not None and k == len(terms) - 1:
                mask &= cyl
            # a product then a sum, each rounded: ``add_(..., alpha=a)`` is a fused multiply-add on
            # CPUs with FMA kernels and two roundings elsewhere (different bytes per machine)
            noisy[z].add_(field[z].mul_(mask).mul_(amplitude))


_MASK_SLAB_VOXELS = 2**19  # voxels per slab of the CPU masking pass (measured best of 2^14-2^21)
