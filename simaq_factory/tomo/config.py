"""The ``reconstruction`` recipe section and the function that applies it.

Importing this module loads no torch (a recipe is read without it, see :mod:`simaq_factory._lazy`);
:func:`reconstruct` imports the solvers when called.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from simaq_factory.recipe.fields import spec
from simaq_factory.tomo.geometry import Geometry

if TYPE_CHECKING:
    import torch

__all__ = ["PROJECTOR_BACKENDS", "ProjectorBackend", "ReconstructionConfig", "reconstruct"]

logger = logging.getLogger(__name__)

#: ``execution.projector`` (``build --projector``): see :mod:`simaq_factory.tomo.projector`.
ProjectorBackend = Literal["torch", "triton", "auto"]
PROJECTOR_BACKENDS: tuple[str, ...] = get_args(ProjectorBackend)


@dataclass(frozen=True, kw_only=True)
class ReconstructionConfig:
    """How projections become a volume (reference-simaq §3.8–3.9, design §8)."""

    method: Literal["fbp", "sirt", "cgls"] = spec(
        "fbp", doc="reconstruction algorithm: fbp (the reference, §3.8-3.9), sirt or cgls (iterative, design §7)"
    )
    filter: Literal["ram-lak", "shepp-logan", "cosine", "hamming", "hann", "hamming_legacy_unshifted"] = spec(
        "hamming",
        doc="FBP filter (§3.8); 'hamming' is the corrected window, 'hamming_legacy_unshifted' the reference bug",
    )
    weighting: Literal["pi_over_2A", "quadrature"] = spec(
        "pi_over_2A", doc="FBP angular weight: pi/(2A) as scikit-image and ASTRA (the reference's torch-radon "
        "summed plainly, a constant factor the normalisation removes), or true quadrature (§3.4)"
    )
    center: Literal["astra", "skimage"] = spec(
        "astra",
        doc="rotation centre of the projections and of their reconstruction (one convention, not a "
            "centre-of-rotation error): (n-1)/2 as torch-radon/ASTRA (§3.4) or n//2 as scikit-image (§3.2)",
    )
    clip_circle: bool = spec(True, doc="zero outside the inscribed circle (the reference left a TODO, §3.9)")
    iterations: int = spec(50, ge=1, le=100000, doc="sirt/cgls: number of iterations (ignored by fbp)")
    nonneg: bool | None = spec(
        None,
        doc="sirt/cgls: clamp to >= 0 (sirt: every iteration, cgls: after the run); null = true for sirt, "
        "false for cgls (classic, unconstrained)",
    )

    def __post_init__(self) -> None:
        if self.method not in ("fbp", "sirt", "cgls"):
            raise ValueError(f"reconstruction.method must be 'fbp', 'sirt' or 'cgls', got {self.method!r}")
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise ValueError(f"reconstruction.iterations must be an int >= 1, got {it!r}")
        if self.nonneg is not None and not isinstance(self.nonneg, bool):
            raise ValueError(f"reconstruction.nonneg must be true, false or null, got {self.nonneg!r}")
        # checked here: the Geometry reconstruct() builds refused them later, naming
        # Geometry.center / Geometry.weighting, fields the caller never set
        if self.weighting not in ("pi_over_2A", "quadrature"):
            raise ValueError(f"reconstruction.weighting must be 'pi_over_2A' or 'quadrature', got {self.weighting!r}")
        c = self.center
        number = isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
        if c not in ("astra", "skimage") and not number:  # a number: a pixel index, as Geometry takes
            raise ValueError(f"reconstruction.center must be 'astra' or 'skimage', got {c!r}")

    @property
    def effective_nonneg(self) -> bool:
        """``nonneg`` with the method default applied (true for sirt, false for cgls and fbp)."""
        return self.method == "sirt" if self.nonneg is None else self.nonneg


def reconstruct(proj: torch.Tensor, geom: Geometry, cfg: ReconstructionConfig, *,
                backend: str = "torch") -> torch.Tensor:
    """Reconstruct an (A, Z, D) projection stack into a (Z, Y, X) volume as ``cfg`` says.

    ``cfg.weighting`` overrides ``geom.weighting``; ``geom``'s centre must resolve to the same pixel
    index as ``cfg.center`` (the projections were made with it), otherwise ``ValueError``.
    ``method`` ``"fbp"`` (default) uses ``filter``/``weighting``; ``"sirt"``/``"cgls"`` use
    ``iterations``/``nonneg`` (:mod:`simaq_factory.tomo.iterative`); all honour ``clip_circle``.
    ``backend`` picks FBP's backprojector (:func:`~simaq_factory.tomo.projector.use_kernels`); the
    iterative methods use the exact transpose, which has no Triton kernel.
    """
    from simaq_factory.tomo.analytic import fbp
    from simaq_factory.tomo.iterative import cgls, sirt

    if not isinstance(cfg, ReconstructionConfig):  # a dict: an AttributeError on its first field otherwise
        raise TypeError(f"cfg must be a ReconstructionConfig (ReconstructionConfig(**fields) for a dict), "
                        f"got {type(cfg).__name__}")
    expected = Geometry(n=geom.n, angles=geom.angles[:1], center=cfg.center).image_center
    if abs(geom.image_center - expected) > 1e-9:
        raise ValueError(
            f"geometry centre {geom.center!r} ({geom.image_center}) differs from "
            f"reconstruction.center {cfg.center!r} ({expected})"
        )
    if geom.weighting != cfg.weighting:
        geom = dataclasses.replace(geom, weighting=cfg.weighting)
    if cfg.method == "sirt":
        return sirt(proj, geom, iterations=cfg.iterations, nonneg=cfg.effective_nonneg, clip_circle=cfg.clip_circle)
    if cfg.method == "cgls":
        return cgls(proj, geom, iterations=cfg.iterations, nonneg=cfg.effective_nonneg, clip_circle=cfg.clip_circle)
    logger.debug("fbp: %s angles, filter=%s, weighting=%s", geom.n_angles, cfg.filter, cfg.weighting)
    return fbp(proj, geom, filter=cfg.filter, clip_circle=cfg.clip_circle, backend=backend)
