"""Sinogram-space artifacts on a projection stack (A, Z, D) in the line-integral domain.

Reference §3.5–§3.7, defaults §9.3. Stages, applied in this order:

1. ``flicker`` (§3.5): flat-field mismatch; per projection i a low-frequency 2D Perlin map P_i in
   [0, 1], proj_i += f · mean(proj_i) · P_i, the mean taken on the clean projection. P_i is a
   random entry of the dataset's ``perlin_lo_2d`` bank in one of its 8 orientations, resampled to
   the projection and min–max normalised.
2. ``ice_thickness`` (§3.6): slab of thickness h seen along a path h / cos|θ_i|; proj_i += path_i · G_i
   with G_i an i.i.d. per-detector-pixel field drawn from ``lac`` (reference N(0.01, 1e-5)).
3. ``misalignment`` (§3.7 proposal, off): per-projection sub-pixel shifts along the detector (D) and
   the tilt axis (Z), linear interpolation, uncovered pixels filled with the projection's mean. Its
   tilted rotation axis (one angle ψ per tilt series) is part of the projection geometry instead
   (:func:`project_tilted_axis`, called before these stages): the reconstruction assumes the axis
   along Z, so the data carry the arcs and doubled edges of an unaligned tilt series.
4. ``poisson`` (§3.7 proposal, off): I = I0·exp(−s·p), counts ~ Poisson(I), p' = −log(max(counts,
   floor)/I0)/s, with s = ``attenuation_scale`` (the voxel size in µm: line integrals are sums of
   µm⁻¹ LACs over voxel steps).
5. ``detector_noise`` (§3.7, declared but unused in the reference; off): p += μ + σ·N(0, 1).

``sample_sinogram_artifacts`` draws all parameters (JSON-able, integer seeds for noise fields, the
flicker's bank entries); ``apply_sinogram_artifacts`` is deterministic given them (and the flicker
bank) and runs on the projections' device.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simaq_factory.acquisition.config import (
    REFERENCE_VOXEL_UM,
    DetectorNoiseConfig,
    FlickerConfig,
    IceThicknessConfig,
    MisalignmentConfig,
    PoissonConfig,
    SinogramArtifactsConfig,
)
from simaq_factory.artifacts.config import PerlinLo2dBankConfig
from simaq_factory.artifacts.perlin import minmax_normalise
from simaq_factory.device import torch_generator
from simaq_factory.recipe.fields import Dist

logger = logging.getLogger(__name__)

__all__ = [
    "DetectorNoiseConfig",
    "FlickerConfig",
    "IceThicknessConfig",
    "MisalignmentConfig",
    "PoissonConfig",
    "SinogramArtifactsConfig",
    "apply_sinogram_artifacts",
    "flicker_maps",
    "sample_sinogram_artifacts",
    "shift_projections",
    "rotate_planes",
    "project_tilted_axis",
]

_SEED_HIGH = 2**63 - 1


# ---------------------------------------------------------------------------------------- sampling
def sample_sinogram_artifacts(
    cfg: SinogramArtifactsConfig,
    n_angles: int,
    rng: np.random.Generator,
    *,
    voxel_length: float = 1.0,
    flicker_entries: int | None = None,
) -> dict[str, Any]:
    """Draw the sinogram-artifact parameters for one tilt series of ``n_angles`` projections.

    ``flicker_entries`` is the number of maps in the flicker bank (``artifacts.banks.perlin_lo_2d
    .entries``; default that field's default): each projection draws one entry and one of the 8
    orientations of a square (:func:`flicker_maps`).

    ``voxel_length`` is the length of one voxel of this volume in reference voxels (1.2 / phantom
    scale; 1 at the reference's 512³): the ice thickness is a length in reference voxels, so its
    path in this volume's voxel units is ``thickness / voxel_length / cos θ`` and the ice keeps
    its proportion to the cells' line integrals at any resolution.

    Each stage draws from its own child of ``rng`` (``rng.spawn``), so enabling one stage does not
    change another's draws. Returns a JSON-able dict consumed by :func:`apply_sinogram_artifacts`.
    """
    r_flk, r_ice, r_mis, r_poi, r_det = rng.spawn(5)

    f = cfg.flicker
    strength = float(f.strength.sample(r_flk))
    n_maps = PerlinLo2dBankConfig().entries if flicker_entries is None else int(flicker_entries)
    if n_maps < 1:
        raise ValueError(f"flicker_entries must be at least 1, got {n_maps}")
    flicker = {
        "applied": bool(f.enabled and strength > 0.0),
        "strength": strength,
        "entries": [int(v) for v in r_flk.integers(0, n_maps, n_angles)],
        "orientations": [int(v) for v in r_flk.integers(0, 8, n_angles)],
    }

    ice_cfg = cfg.ice_thickness
    ice = {
        "applied": bool(ice_cfg.enabled),
        "thickness": float(ice_cfg.thickness.sample(r_ice)),
        "voxel_length": float(voxel_length),
        "lac": ice_cfg.lac.to_json(),
        "seed": int(r_ice.integers(0, _SEED_HIGH)),
        "min_cos": ice_cfg.min_cos,
    }

    m = cfg.misalignment
    misalignment: dict[str, Any] = {"applied": bool(m.enabled and n_angles > 0)}
    if misalignment["applied"]:
        misalignment["detector_shift_px"] = [float(v) for v in m.detector_shift_px.sample(r_mis, n_angles)]
        misalignment["axial_shift_px"] = [float(v) for v in m.axial_shift_px.sample(r_mis, n_angles)]
        misalignment["axis_tilt_deg"] = float(m.axis_tilt_deg.sample(r_mis))

    p = cfg.poisson
    poisson = {
        "applied": bool(p.enabled),
        "photons": float(p.photons.sample(r_poi)),
        "attenuation_scale": float(
            REFERENCE_VOXEL_UM * voxel_length if p.attenuation_scale == "auto" else p.attenuation_scale
        ),
        "min_counts": p.min_counts,
        "seed": int(r_poi.integers(0, _SEED_HIGH)),
    }

    d = cfg.detector_noise
    detector = {
        "applied": bool(d.enabled and r_det.random() < d.probability),
        "mean": float(d.mean.sample(r_det)),
        "sigma": float(d.sigma.sample(r_det)),
        "seed": int(r_det.integers(0, _SEED_HIGH)),
    }
    return {
        "n_angles": int(n_angles),
        "flicker": flicker,
        "ice_thickness": ice,
        "misalignment": misalignment,
        "poisson": poisson,
        "detector_noise": detector,
    }


# ---------------------------------------------------------------------------------------- applying
def _dist_field(dist: Dist, shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """A float32 field of i.i.d. draws from ``dist`` with a torch generator."""
    if dist.kind == "const":
        return torch.full(shape, dist.value, dtype=torch.float32, device=device)
    if dist.kind == "uniform":
        u = torch.rand(shape, generator=gen, dtype=torch.float32, device=device)
        return dist.low + (dist.high - dist.low) * u
    out = dist.mean + dist.std * torch.randn(shape, generator=gen, dtype=torch.float32, device=device)
    if dist.min is not None or dist.max is not None:
        out = out.clamp(min=dist.min, max=dist.max)
    return out


def _shift_last(p: torch.Tensor, shifts: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Shift each p[a] (A, M, N) by shifts[a] pixels along the last axis; out[i] = p[i − s]."""
    a, m, n = p.shape
    pos = torch.arange(n, dtype=torch.float64, device=p.device)[None, :] - shifts[:, None]  # (A, N)
    i0 = torch.floor(pos)
    w = (pos - i0).to(torch.float32)[:, None, :]
    i0 = i0.to(torch.int64)
    out = []
    for idx in (i0, i0 + 1):
        valid = ((idx >= 0) & (idx < n))[:, None, :]
        v = torch.gather(p, 2, idx.clamp(0, n - 1)[:, None, :].expand(a, m, n))
        out.append(torch.where(valid, v, fill[:, None, None]))
    return out[0] * (1.0 - w) + out[1] * w


def shift_projections(
    proj: torch.Tensor, axial_px: Sequence[float], detector_px: Sequence[float]
) -> torch.Tensor:
    """Shift projection a by (axial_px[a], detector_px[a]) pixels along (Z, D), linear interpolation.

    Content moves towards higher indices for positive shifts (an integer shift equals ``torch.roll``
    away from the edges); pixels with no source are filled with the projection's mean.
    """
    fill = proj.mean(dim=(1, 2))
    dev = proj.device
    det = torch.tensor(list(detector_px), dtype=torch.float64, device=dev)
    ax = torch.tensor(list(axial_px), dtype=torch.float64, device=dev)
    out = _shift_last(proj, det, fill)
    out = _shift_last(out.transpose(1, 2), ax, fill).transpose(1, 2)
    return out.contiguous()


def rotate_planes(x: torch.Tensor, deg: float) -> torch.Tensor:
    """Rotate every image ``x[b]`` of a (B, H, W) stack by ``deg`` about its centre.

    Content at (h, w) (relative to the centre ((H − 1)/2, (W − 1)/2)) moves to R·(h, w), where R
    turns the H axis towards +W by ``deg``: R·(1, 0) = (cos, sin). Bilinear interpolation; pixels
    whose source lies outside the image take the nearest edge value. Each output pixel is computed
    on its own, so the result does not depend on the thread count.
    """
    if x.ndim != 3:
        raise ValueError(f"expected a (B, H, W) stack, got shape {tuple(x.shape)}")
    b, h, w = x.shape
    if deg == 0.0:
        return x.clone()
    rad = math.radians(deg)
    c, s = math.cos(rad), math.sin(rad)
    dev = x.device
    hh = torch.arange(h, dtype=torch.float64, device=dev)[:, None] - (h - 1) / 2
    ww = torch.arange(w, dtype=torch.float64, device=dev)[None, :] - (w - 1) / 2
    # output o samples the input at R⁻¹·o = Rᵀ·o
    src_h = c * hh + s * ww
    src_w = -s * hh + c * ww
    gx = src_w / max((w - 1) / 2, 0.5)
    gy = src_h / max((h - 1) / 2, 0.5)
    grid = torch.stack([gx.expand(h, w), gy.expand(h, w)], dim=-1).to(torch.float32)
    out = torch.nn.functional.grid_sample(
        x.float()[:, None], grid[None].expand(b, h, w, 2), mode="bilinear", padding_mode="border",
        align_corners=True,
    )
    return out[:, 0]


def project_tilted_axis(volume: torch.Tensor, geom: Any, tilt_deg: float, project: Any) -> torch.Tensor:
    """Projections (A, S, D) of ``volume`` (S, Y, X) about a rotation axis tilted by ``tilt_deg``.

    The axis lies in the detector plane, along (cos ψ, sin ψ) in (S, D), through the centre. With
    Q the rotation by ψ about the beam axis of 0° (the (S, X) plane of the volume, the same sense),
    rotating about Q·e_S is Q R_θ Qᵀ, and Q commutes with integration along the beam, so
    P_ψ[f](θ) = rot_ψ(P[Qᵀ f](θ)): the volume turned by −ψ in (S, X), projected about S with
    ``project(volume, geom)``, each projection turned by +ψ in (S, D) (:func:`rotate_planes`).
    At θ = 0 this is the untilted projection up to interpolation (the two bilinear rotations
    smooth it slightly: 2.6 % relative difference for a blob of σ = 3 voxels, more for finer
    detail); a point off the axis traces a line at −ψ to D.
    """
    if tilt_deg == 0.0:
        return project(volume, geom)
    turned = rotate_planes(volume.transpose(0, 1), -tilt_deg).transpose(0, 1).contiguous()
    return rotate_planes(project(turned, geom), tilt_deg).contiguous()


def flicker_maps(bank: torch.Tensor, entries: Sequence[int], orientations: Sequence[int],
                 out_hw: tuple[int, int]) -> torch.Tensor:
    """The flicker maps of a tilt series: float32 (A, H, W) on the bank's device, each in [0, 1].

    Map i is ``bank[entries[i]]`` (a square (e, e) map) in orientation ``o = orientations[i]``:
    transposed when ``o & 4``, then its rows reversed when ``o & 1`` and its columns when ``o & 2``;
    bilinearly resampled (``align_corners=False``) to ``out_hw`` and min–max normalised on its own.
    """
    if bank.ndim != 3 or bank.shape[1] != bank.shape[2]:
        raise ValueError(f"the flicker bank must be (entries, e, e), got shape {tuple(bank.shape)}")
    idx = torch.as_tensor(list(entries), dtype=torch.long)
    orient = torch.as_tensor(list(orientations), dtype=torch.long)
    if idx.numel() != orient.numel():
        raise ValueError(f"{idx.numel()} flicker entries but {orient.numel()} orientations")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bank.shape[0]):
        raise ValueError(f"flicker entry out of range: the bank has {bank.shape[0]} maps")
    if orient.numel() and (int(orient.min()) < 0 or int(orient.max()) > 7):
        raise ValueError("flicker orientations must lie in 0..7")
    small = bank[idx.to(bank.device)]
    orient = orient.to(bank.device)[:, None, None]
    small = torch.where(orient & 4 != 0, small.transpose(1, 2), small)
    small = torch.where(orient & 1 != 0, small.flip(1), small)
    small = torch.where(orient & 2 != 0, small.flip(2), small)
    big = F.interpolate(small[:, None].float(), size=tuple(out_hw), mode="bilinear", align_corners=False)
    return minmax_normalise(big[:, 0], (1, 2))


def apply_sinogram_artifacts(
    proj: torch.Tensor,
    angles_deg: Sequence[float] | torch.Tensor | np.ndarray,
    params: dict[str, Any],
    flicker_bank: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply sampled sinogram artifacts; no randomness beyond the seeds in ``params``.

    Args:
        proj: projection stack (A, Z, D) float32, line integrals; not modified.
        angles_deg: the A forward (jittered) tilt angles in degrees used to make ``proj``.
        params: the dict from :func:`sample_sinogram_artifacts` (or its JSON round-trip).
        flicker_bank: the dataset's ``perlin_lo_2d`` bank (entries, e, e); needed when the flicker
            is applied (moved to ``proj``'s device).

    Returns:
        A new (A, Z, D) float32 tensor on ``proj.device``.
    """
    if proj.ndim != 3:
        raise ValueError(f"expected projections (A, Z, D), got shape {tuple(proj.shape)}")
    n_a, n_z, n_d = proj.shape
    angles = np.asarray(
        angles_deg.detach().cpu().numpy() if isinstance(angles_deg, torch.Tensor) else angles_deg,
        dtype=np.float64,
    ).reshape(-1)
    if angles.size != n_a or int(params["n_angles"]) != n_a:
        raise ValueError(f"{n_a} projections, {angles.size} angles, params for {params['n_angles']}")
    dev = proj.device
    out = proj.float().clone()

    fl = params["flicker"]
    if fl["applied"]:
        if flicker_bank is None:
            raise ValueError("the flicker needs the dataset's perlin_lo_2d noise bank (flicker_bank)")
        maps = flicker_maps(flicker_bank.to(dev), fl["entries"], fl["orientations"], (n_z, n_d))
        clean_mean = out.mean(dim=(1, 2))
        out += float(fl["strength"]) * clean_mean[:, None, None] * maps

    ice = params["ice_thickness"]
    if ice["applied"]:
        cos = np.maximum(np.abs(np.cos(np.deg2rad(angles))), float(ice["min_cos"]))
        thickness = float(ice["thickness"]) / float(ice.get("voxel_length", 1.0))
        path = torch.from_numpy(thickness / cos).to(device=dev, dtype=torch.float32)
        gen = torch_generator(int(ice["seed"]), dev)
        field = _dist_field(Dist.parse(ice["lac"], "ice_thickness.lac"), (n_a, n_z, n_d), gen, dev)
        out += path[:, None, None] * field

    mis = params["misalignment"]
    if mis["applied"]:
        out = shift_projections(out, mis["axial_shift_px"], mis["detector_shift_px"])

    po = params["poisson"]
    if po["applied"]:
        i0, s = float(po["photons"]), float(po["attenuation_scale"])
        gen = torch_generator(int(po["seed"]), dev)
        counts = torch.poisson(i0 * torch.exp(-s * out), generator=gen)
        out = (math.log(i0) - torch.log(counts.clamp_min(float(po["min_counts"])))) / s

    det = params["detector_noise"]
    if det["applied"]:
        gen = torch_generator(int(det["seed"]), dev)
        noise = torch.randn((n_a, n_z, n_d), generator=gen, dtype=torch.float32, device=dev)
        out += float(det["mean"]) + float(det["sigma"]) * noise
    return out
