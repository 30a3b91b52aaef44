"""Smooth random displacement fields for elastic deformation of phantoms (reference §1.11).

The field u is stored on a coarse regular grid and evaluated by multilinear interpolation, so it is
cheap at any volume size and can be evaluated inside each object's bounding box only (no full-size
field is ever materialised). A voxel x of the deformed phantom takes the value of the undeformed
scene at ``x + u(x)`` (the same backward mapping as ``grid_sample``), for phantom and labels alike.
Unlike the reference, which resampled the voxelized phantom bilinearly (blending the LACs of
neighbouring objects into every boundary voxel, a sub-voxel in-plane blur, and rounding the label
masks), the scene is point-sampled: edges stay hard and phantom and labels agree voxel for voxel;
``phantom.antialias.supersample`` > 1 gives partial-volume boundaries instead.

Construction (deterministic, from a :class:`DeformationSpec` only):

* grid axes: (y, x) for mode "2d" (one field shared by all z-slices, like the reference), (z, y, x)
  for "3d"; components (u_y, u_x) resp. (u_z, u_y, u_x), in voxels;
* node j of an axis sits at voxel coordinate −1 + j·h (h = ``spacing``) and the grid covers
  [−1, n] so sub-voxel samples at the volume border are inside it;
* values: U(−1, 1) noise from ``numpy.random.default_rng(seed)`` smoothed by a separable Gaussian
  of ``sigma / h`` nodes (truncated at 4 std, no boundary effects: the noise is padded), then
  scaled to a per-component std of ``std`` voxels (exact in expectation: std of the smoothed noise
  = √(1/3 · Π Σw²)). All in float64 NumPy with fixed loops; the grid goes to the device as float32.

Interpolation uses separate elementwise torch ops (no BLAS, no fused ops), so results do not depend
on the thread count, and CPU and CUDA perform the same IEEE float32 operations.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage
import torch

from simaq_factory import portable_math
from simaq_factory.device import lerp_select, true_div
from simaq_factory.phantom.config import DeformationConfig
from simaq_factory.phantom.spec import DeformationSpec

__all__ = ["DisplacementField", "sample_deformation", "build_grid", "NODES_PER_SIGMA"]

NODES_PER_SIGMA = 4.0  # grid spacing = sigma / 4 (at least one voxel): ≤ 0.3 % interpolation error
_TRUNCATE = 4.0


def sample_deformation(
    cfg: DeformationConfig, scale: float, rng: np.random.Generator
) -> DeformationSpec | None:
    """Resolve ``cfg`` for a phantom of ``scale`` voxels per unit; None when the mode is "off".

    Draws one integer seed from ``rng`` (nothing when off). Lengths: reference voxels × scale/1.2.
    """
    if cfg.mode == "off":
        return None
    factor = scale / 1.2
    sigma = cfg.sigma * factor
    seed = int(rng.integers(0, 2**63 - 1))
    return DeformationSpec(
        mode=cfg.mode,
        seed=seed,
        sigma=float(sigma),
        std=float(cfg.displacement_std() * factor),
        spacing=float(max(sigma / NODES_PER_SIGMA, 1.0)),
    )


def _axes(d: DeformationSpec) -> tuple[int, ...]:
    return (1, 2) if d.mode == "2d" else (0, 1, 2)


def _kernel(sigma_nodes: float) -> np.ndarray:
    rad = max(1, int(math.ceil(_TRUNCATE * sigma_nodes)))
    k = np.arange(-rad, rad + 1, dtype=np.float64)
    w = portable_math.exp(-0.5 * (k / sigma_nodes) ** 2)
    return w / w.sum()


def build_grid(d: DeformationSpec, shape: tuple[int, int, int]) -> np.ndarray:
    """Node values (C, *grid) float64 in voxels; C = number of grid axes (2 or 3)."""
    axes = _axes(d)
    counts = [int(math.ceil((shape[a] + 1) / d.spacing)) + 2 for a in axes]
    w = _kernel(d.sigma / d.spacing)
    pad = (len(w) - 1) // 2
    rng = np.random.default_rng(d.seed)
    noise = rng.uniform(-1.0, 1.0, size=(len(axes), *(c + 2 * pad for c in counts)))
    out = noise
    for ax in range(1, out.ndim):
        out = scipy.ndimage.correlate1d(out, w, axis=ax, mode="constant", cval=0.0)
        out = np.take(out, np.arange(pad, out.shape[ax] - pad), axis=ax)
    std_smoothed = math.sqrt((1.0 / 3.0) * float(np.sum(w * w)) ** len(axes))
    return np.ascontiguousarray(out * (d.std / std_smoothed))


def _lerp_axis(g: torch.Tensor, dim: int, i0: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``g`` along ``dim`` at nodes i0 + f (f broadcast along ``dim``)."""
    shape = [1] * g.dim()
    shape[dim] = -1
    w1 = f.reshape(shape)
    return lerp_select(g, dim, i0, i0 + 1, 1.0 - w1, w1)


class DisplacementField:
    """A displacement field on ``device`` for a volume of ``shape`` (Z, Y, X).

    ``umax`` (3,) bounds |u| per axis (z, y, x) in voxels; ``lipschitz`` (3, 3) bounds
    |∂u_i/∂x_j| (both exact for the multilinear interpolant: it never leaves the node range).
    """

    def __init__(self, d: DeformationSpec, shape: tuple[int, int, int], device: torch.device | str) -> None:
        self.spec = d
        self.shape = tuple(int(s) for s in shape)
        self.axes = _axes(d)
        self.device = torch.device(device)
        grid = build_grid(d, self.shape)
        self.counts = grid.shape[1:]
        self.grid = torch.as_tensor(grid.astype(np.float32), device=self.device)
        g32 = grid.astype(np.float32).astype(np.float64)
        self.umax = np.zeros(3)
        self.lipschitz = np.zeros((3, 3))
        for ci, a in enumerate(self.axes):
            self.umax[a] = float(np.max(np.abs(g32[ci]))) if g32[ci].size else 0.0
            for gi, b in enumerate(self.axes):
                diff = np.abs(np.diff(g32[ci], axis=gi))
                self.lipschitz[a, b] = float(diff.max()) / d.spacing if diff.size else 0.0

    # ------------------------------------------------------------------------------ evaluation
    def _nodes(self, coords: np.ndarray, gi: int) -> tuple[np.ndarray, np.ndarray]:
        """Lower node index and fraction for voxel coordinates (float64 NumPy) along grid axis gi."""
        t = (coords + 1.0) / self.spec.spacing
        i0 = np.clip(np.floor(t), 0, self.counts[gi] - 2).astype(np.int64)
        f = np.clip(t - i0, 0.0, 1.0)
        return i0, f

    def on_box(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> torch.Tensor:
        """u at the integer voxels of the box [lo, hi): (C, *box over the grid axes) float32.

        For "2d" the result is (2, ny, nx) = (u_y, u_x); for "3d" (3, nz, ny, nx) = (u_z, u_y, u_x).
        """
        g = self.grid
        for gi, a in enumerate(self.axes):
            i0, f = self._nodes(np.arange(lo[a], hi[a], dtype=np.float64), gi)
            first, last = int(i0.min()), int(i0.max()) + 2
            g = g.narrow(gi + 1, first, last - first)
            g = _lerp_axis(
                g,
                gi + 1,
                torch.as_tensor(i0 - first, device=self.device),
                torch.as_tensor(f.astype(np.float32), device=self.device),
            )
        return g

    def at_points(self, pts: torch.Tensor) -> torch.Tensor:
        """u at arbitrary points ``pts`` (N, 3) float32 voxel coordinates (z, y, x) → (N, 3) float32."""
        n = pts.shape[0]
        spacing = float(self.spec.spacing)
        idx, frac = [], []
        for gi, a in enumerate(self.axes):
            t = true_div(pts[:, a] + 1.0, spacing)
            i0 = torch.floor(t).clamp(0, self.counts[gi] - 2)
            frac.append((t - i0).clamp(0.0, 1.0))
            idx.append(i0.long())
        c = self.grid.shape[0]
        flat = self.grid.reshape(c, -1)
        strides = [int(np.prod(self.counts[gi + 1 :])) for gi in range(len(self.axes))]

        def corner(bits: tuple[int, ...]) -> torch.Tensor:
            lin = torch.zeros(n, dtype=torch.long, device=pts.device)
            for gi, b in enumerate(bits):
                lin = lin + (idx[gi] + b) * strides[gi]
            return flat[:, lin]  # (C, N)

        def reduce(prefix: tuple[int, ...]) -> torch.Tensor:
            gi = len(prefix)
            if gi == len(self.axes):
                return corner(prefix)
            lo_v, hi_v = reduce(prefix + (0,)), reduce(prefix + (1,))
            return lo_v * (1.0 - frac[gi]) + hi_v * frac[gi]

        vals = reduce(())
        out = torch.zeros((n, 3), dtype=torch.float32, device=pts.device)
        for ci, a in enumerate(self.axes):
            out[:, a] = vals[ci]
        return out
