"""A reusable projector plan: the forward projector and its exact transpose on cached tables.

Iterative reconstructions apply ``A`` (:func:`~simaq_factory.tomo.projector.forward_project`) and
``Aᵀ`` dozens of times with one geometry. A :class:`ProjectorPlan` builds the interpolation tables
of :func:`~simaq_factory.tomo.projector.ray_tables` once, drops their zero-weight entries, and keeps
two sparse layouts per chunk of angles:

* **forward** (one bag per ray): the pixels a ray samples and their bilinear weights;
* **transposed** (one bag per pixel): the same (pixel, ray, weight) triples, stably sorted by pixel.

Both directions are then a single :func:`torch.nn.functional.embedding_bag` gather (``mode="sum"``)
per chunk, in which every output row is summed by one thread in a fixed order; the chunks of the
adjoint are accumulated in angle order. So ``Aᵀ`` is the exact transpose of ``A`` (the same weights
in the same dtype, scattered back) and CPU results do not depend on the thread count — no atomics.
They do depend, in the last bits, on the chunk size (``max_chunk_bytes``), which is fixed by the caller.

Data layout ("rows"): a volume is a (P, Z) table whose row ``i`` is the Z-vector of support pixel
``plan.pixels[i]`` (flat ``y·n + x``); a projection stack is an (A·D, Z) table with row ``a·D + d``.
Solvers work in this layout throughout and convert once at each end.

Support: with ``clip_circle=True`` the unknowns are only the pixels inside the reconstruction circle
(radius ``n // 2`` around the axis, as FBP clips): the plan's ``A`` is ``A·M`` and ``Aᵀ`` is ``M·Aᵀ``
for the mask ``M``.

Memory: a table entry costs 16 bytes (int32 index + weight in the forward and in the transposed
layout; 24 for float64). About ``A · n² · 4 · (π/4 with the circle)`` entries: ~85 MB at 128², 100
angles; ~0.6 GB at 256², 180 angles. Chunks are cached in angle order until ``max_cache_bytes``
(default 1 GiB) is reached; the rest are rebuilt (not sorted differently, so results are identical)
on every call, which is slower but bounded. Build temporaries are bounded by ``max_chunk_bytes``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simaq_factory.tomo.geometry import Geometry
from simaq_factory.tomo.projector import (
    DEFAULT_CHUNK_BYTES,
    _check_proj,
    _check_volume,
    _chunk_budget,
    _ray_table_bytes_per_angle,
    ray_tables,
)

__all__ = ["DEFAULT_CACHE_BYTES", "ProjectorPlan", "adjoint_project"]

logger = logging.getLogger(__name__)

#: Default bound on the tables a plan keeps between calls.
DEFAULT_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class _Chunk:
    """Sparse tables of the rays of angles ``a0 … a1 − 1`` (rows ``a0·D … a1·D − 1``)."""

    a0: int
    a1: int
    fwd_idx: torch.Tensor  # (E,) int32 support-pixel row per entry, grouped by ray
    fwd_off: torch.Tensor  # (R,) int32 start of each ray's bag
    fwd_w: torch.Tensor  # (E,) weights
    adj_idx: torch.Tensor  # (E,) int32 local ray row per entry, grouped by pixel
    adj_off: torch.Tensor  # (P,) int32 start of each pixel's bag
    adj_w: torch.Tensor  # (E,) weights

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.fwd_idx, self.fwd_off, self.fwd_w,
                                                            self.adj_idx, self.adj_off, self.adj_w))


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    off = torch.zeros_like(counts)
    if counts.numel() > 1:
        off[1:] = torch.cumsum(counts[:-1], 0)
    return off.to(torch.int32)


class ProjectorPlan:
    """Cached forward projector ``A`` and its exact transpose ``Aᵀ`` for one geometry, dtype, device.

    Args:
        geom: the scan geometry.
        dtype: floating dtype of the data the plan is applied to (weights are computed in it, as
            :func:`~simaq_factory.tomo.projector.forward_project` does).
        device: where tables and data live.
        clip_circle: restrict the unknowns to the reconstruction circle (see the module docstring).
        max_cache_bytes: bound on the tables kept between calls (0: keep none).
        max_chunk_bytes: bound on the temporaries of building one chunk of tables.
    """

    def __init__(
        self,
        geom: Geometry,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        clip_circle: bool = False,
        max_cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"plan dtype must be floating point, got {dtype}")
        self.geom = geom
        self.dtype = dtype
        # the device its tensors report: 'cuda' means the current GPU ('cuda:0'), 'cpu:0' is 'cpu';
        # the row checks compare with the rows' device, which always carries that form
        self.device = torch.empty(0, device=torch.device(device)).device
        self.clip_circle = bool(clip_circle)
        n, width = geom.n, geom.n + 2
        yy, xx = torch.meshgrid(
            torch.arange(n, dtype=torch.float64, device=self.device),
            torch.arange(n, dtype=torch.float64, device=self.device),
            indexing="ij",
        )
        if self.clip_circle:
            c, r = geom.image_center, geom.circle_radius
            keep = ((xx - c) ** 2 + (yy - c) ** 2 <= r * r).reshape(-1)
        else:
            keep = torch.ones(n * n, dtype=torch.bool, device=self.device)
        #: (P,) int64 flat indices ``y·n + x`` of the support pixels, ascending.
        self.pixels = torch.nonzero(keep).reshape(-1)
        # padded-table row → support row (−1: border or outside the support)
        lut = torch.full((width * width,), -1, dtype=torch.int32, device=self.device)
        pad_rows = (self.pixels // n + 1) * width + (self.pixels % n + 1)
        lut[pad_rows] = torch.arange(self.pixels.numel(), dtype=torch.int32, device=self.device)
        self._lut = lut
        itemsize = torch.empty((), dtype=dtype).element_size()
        per_angle = _ray_table_bytes_per_angle(geom, itemsize)
        budget = _chunk_budget(max_chunk_bytes, self.device)
        self._chunk = max(1, min(geom.n_angles, budget // max(per_angle, 1)))
        self._bounds = [(a0, min(a0 + self._chunk, geom.n_angles)) for a0 in range(0, geom.n_angles, self._chunk)]
        self._cache: dict[int, _Chunk] = {}
        self.cached_bytes = 0
        self._max_cache = int(max_cache_bytes)
        self._cache_full = False

    # ---------------------------------------------------------------------------------- layout
    @property
    def n_pixels(self) -> int:
        """P, the number of unknowns per slice."""
        return int(self.pixels.numel())

    @property
    def n_rays(self) -> int:
        """A·D, the number of measurements per slice."""
        return self.geom.n_angles * self.geom.detectors

    def volume_to_rows(self, volume: torch.Tensor) -> torch.Tensor:
        """(Z, n, n) volume → (P, Z) support rows (pixels outside the support are dropped)."""
        _check_volume(volume, self.geom)
        flat = volume.to(device=self.device, dtype=self.dtype).reshape(volume.shape[0], -1)
        return flat.index_select(1, self.pixels).t().contiguous()

    def rows_to_volume(self, rows: torch.Tensor) -> torch.Tensor:
        """(P, Z) support rows → (Z, n, n) volume, zero outside the support."""
        n = self.geom.n
        out = torch.zeros((n * n, rows.shape[1]), dtype=rows.dtype, device=rows.device)
        out.index_copy_(0, self.pixels, rows)
        return out.t().reshape(rows.shape[1], n, n).contiguous()

    def proj_to_rows(self, proj: torch.Tensor) -> torch.Tensor:
        """(A, Z, D) projections → (A·D, Z) ray rows."""
        _check_proj(proj, self.geom, self.geom.detectors)
        p = proj.to(device=self.device, dtype=self.dtype)
        return p.permute(0, 2, 1).reshape(self.n_rays, proj.shape[1]).contiguous()

    def rows_to_proj(self, rows: torch.Tensor) -> torch.Tensor:
        """(A·D, Z) ray rows → (A, Z, D) projections."""
        a, d = self.geom.n_angles, self.geom.detectors
        return rows.reshape(a, d, rows.shape[1]).permute(0, 2, 1).contiguous()

    # ---------------------------------------------------------------------------------- tables
    def _build(self, a0: int, a1: int) -> _Chunk:
        idx, w = ray_tables(self.geom, a0, a1, self.dtype, self.device)
        n_rays = idx.shape[0]
        pix = self._lut[idx.reshape(-1).long()].reshape(idx.shape)
        keep = (w != 0) & (pix >= 0)
        fwd_idx, fwd_w = pix[keep], w[keep]  # row-major: grouped by ray, in sample order
        fwd_off = _offsets(keep.sum(dim=1))
        ray = torch.arange(n_rays, dtype=torch.int32, device=self.device)[:, None].expand_as(keep)[keep]
        # stable sort by pixel: within a pixel's bag entries stay in (ray, sample) order
        order = torch.sort(fwd_idx, stable=True).indices
        counts = torch.bincount(fwd_idx, minlength=self.n_pixels)
        return _Chunk(
            a0, a1, fwd_idx, fwd_off, fwd_w,
            adj_idx=ray[order], adj_off=_offsets(counts), adj_w=fwd_w[order],
        )

    def _chunks(self):  # type: ignore[no-untyped-def]
        for i, (a0, a1) in enumerate(self._bounds):
            chunk = self._cache.get(i)
            if chunk is None:
                chunk = self._build(a0, a1)
                if not self._cache_full and self.cached_bytes + chunk.nbytes <= self._max_cache:
                    self._cache[i] = chunk
                    self.cached_bytes += chunk.nbytes
                else:
                    if not self._cache_full and self._max_cache > 0:
                        logger.info("projector plan: cache full at %d MB; rebuilding the rest per call",
                                    self.cached_bytes >> 20)
                    self._cache_full = True
            yield chunk

    def _check_rows(self, rows: torch.Tensor, expected: int, what: str) -> None:
        if rows.ndim != 2 or rows.shape[0] != expected:
            raise ValueError(f"{what} rows must be ({expected}, Z), got {tuple(rows.shape)}")
        if rows.dtype != self.dtype or rows.device != self.device:
            raise ValueError(f"{what} rows must be {self.dtype} on {self.device}, got {rows.dtype} on {rows.device}")

    # ------------------------------------------------------------------------------- operators
    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: (P, Z) support rows → (A·D, Z) ray rows (line integrals, voxel units)."""
        self._check_rows(x, self.n_pixels, "volume")
        x = x.contiguous()
        out = torch.zeros((self.n_rays, x.shape[1]), dtype=self.dtype, device=self.device)
        d = self.geom.detectors
        for ch in self._chunks():
            if ch.fwd_idx.numel() and x.shape[1]:
                out[ch.a0 * d : ch.a1 * d] = F.embedding_bag(
                    ch.fwd_idx, x, ch.fwd_off, mode="sum", per_sample_weights=ch.fwd_w
                )
        return out

    def adjoint_rows(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y``: (A·D, Z) ray rows → (P, Z) support rows (exact transpose of :meth:`forward_rows`)."""
        self._check_rows(y, self.n_rays, "projection")
        y = y.contiguous()
        out = torch.zeros((self.n_pixels, y.shape[1]), dtype=self.dtype, device=self.device)
        d = self.geom.detectors
        for ch in self._chunks():
            if ch.adj_idx.numel() and y.shape[1]:
                out += F.embedding_bag(
                    ch.adj_idx, y[ch.a0 * d : ch.a1 * d], ch.adj_off, mode="sum", per_sample_weights=ch.adj_w
                )
        return out

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(Z, n, n) → (A, Z, D); equals ``forward_project`` (of the masked volume when clipping)."""
        return self.rows_to_proj(self.forward_rows(self.volume_to_rows(volume)))

    def adjoint(self, proj: torch.Tensor) -> torch.Tensor:
        """(A, Z, D) → (Z, n, n); the transpose of :meth:`forward`."""
        return self.rows_to_volume(self.adjoint_rows(self.proj_to_rows(proj)))


def adjoint_project(
    proj: torch.Tensor,
    geom: Geometry,
    *,
    clip_circle: bool = False,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Matched backprojection: the exact transpose of :func:`~simaq_factory.tomo.projector.forward_project`.

    ``⟨forward_project(x), y⟩ = ⟨x, adjoint_project(y)⟩`` up to floating-point rounding of the sums
    (same bilinear weights, scattered back by a fixed-order gather; no atomics, so CPU results are
    independent of the thread count). Unlike :func:`~simaq_factory.tomo.projector.backproject`
    (pixel-driven, only approximately adjoint) this is what gradient-based solvers need. Tables are
    built per call and dropped; use a :class:`ProjectorPlan` to reuse them.

    Args:
        proj: (A, Z, D) floating tensor, D = ``geom.det_count``, any device.
        geom: the scan geometry.
        clip_circle: zero the result outside the reconstruction circle (``M·Aᵀ``; skips their work).
        max_chunk_bytes: bound on table temporaries (angles are processed in chunks under it).

    Returns:
        (Z, n, n) tensor, same dtype/device as ``proj``.
    """
    _check_proj(proj, geom, geom.detectors)
    plan = ProjectorPlan(
        geom, dtype=proj.dtype, device=proj.device, clip_circle=clip_circle,
        max_cache_bytes=0, max_chunk_bytes=max_chunk_bytes,
    )
    return plan.adjoint(proj)
