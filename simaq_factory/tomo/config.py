"""The ``reconstruction`` recipe section and the function that applies it."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from simaq_factory.recipe.fields import spec
from simaq_factory.tomo.fbp import fbp
from simaq_factory.tomo.geometry import Geometry

__all__ = ["ReconstructionConfig", "reconstruct"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReconstructionConfig:
    """How projections become a volume (reference-simaq §3.8–3.9, design §8)."""

    method: Literal["fbp"] = spec("fbp", doc="reconstruction algorithm; the reference uses FBP (§3.8-3.9)")
    filter: Literal["ram-lak", "shepp-logan", "cosine", "hamming", "hann", "hamming_legacy_unshifted"] = spec(
        "hamming",
        doc="FBP filter (§3.8); 'hamming' is the corrected window, 'hamming_legacy_unshifted' the reference bug",
    )
    weighting: Literal["pi_over_2A", "quadrature"] = spec(
        "pi_over_2A", doc="FBP angular weight: pi/(2A) as torch-radon/scikit-image, or true quadrature (§3.4)"
    )
    center: Literal["astra", "skimage"] = spec(
        "astra", doc="rotation centre: (n-1)/2 as torch-radon/ASTRA (§3.4) or n//2 as scikit-image (§3.2)"
    )
    clip_circle: bool = spec(True, doc="zero outside the inscribed circle (the reference left a TODO, §3.9)")


def reconstruct(proj: torch.Tensor, geom: Geometry, cfg: ReconstructionConfig) -> torch.Tensor:
    """Reconstruct an (A, Z, D) projection stack into a (Z, Y, X) volume as ``cfg`` says.

    ``cfg.weighting`` overrides ``geom.weighting``; ``geom``'s centre must resolve to the same pixel
    index as ``cfg.center`` (the projections were made with it), otherwise ``ValueError``.
    """
    expected = Geometry(n=geom.n, angles=geom.angles[:1], center=cfg.center).image_center
    if abs(geom.image_center - expected) > 1e-9:
        raise ValueError(
            f"geometry centre {geom.center!r} ({geom.image_center}) differs from "
            f"reconstruction.center {cfg.center!r} ({expected})"
        )
    if geom.weighting != cfg.weighting:
        geom = dataclasses.replace(geom, weighting=cfg.weighting)
    if cfg.method != "fbp":
        raise ValueError(f"reconstruction.method {cfg.method!r} is not implemented (only 'fbp')")
    logger.debug("fbp: %s angles, filter=%s, weighting=%s", geom.n_angles, cfg.filter, cfg.weighting)
    return fbp(proj, geom, filter=cfg.filter, clip_circle=cfg.clip_circle)
