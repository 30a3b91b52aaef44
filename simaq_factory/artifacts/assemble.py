"""Per-sample use of bank entries: random orientation and box, resampled onto the volume.

A *placement* is JSON: ``{"entry": k, "perm": [p0, p1, p2], "flip": [f0, f1, f2],
"box_start": [s0, s1, s2], "box_size": [n0, n1, n2]}``. Applied to a bank cube B (e, e, e):
permute its axes (``B.permute(perm)``: output axis d is input axis ``perm[d]``), flip output axes d
with ``flip[d]``, cut the box ``[start, start + size)`` per axis, and resample it trilinearly
(``align_corners=False``) to the volume shape (z, y, x). The 48 orientations of the cube are
equally likely. Everything happens on the bank's device, with exactly rounded elementwise ops
only (min and max are exact), so the bytes depend on no thread count or CPU vector width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simaq_factory.device import lerp_select

__all__ = ["crack_field", "oriented_box", "place", "linear_taps", "resample", "sample_placement"]


def sample_placement(
    rng: np.random.Generator, entries: int, edge: int, shape: tuple[int, ...], crop: float
) -> dict[str, Any]:
    """Draw a bank entry, an orientation and a box of ``crop`` × edge in the volume's aspect.

    Box edges are ``round(crop · edge · shape_d / max(shape))`` voxels (at least 2, at most edge),
    so a non-cubic volume is not stretched; ``crop = 1`` with a cubic volume uses the whole cube.
    """
    entry = int(rng.integers(0, entries))
    perm = [int(v) for v in rng.permutation(3)]
    flip = [bool(v) for v in rng.random(3) < 0.5]
    longest = max(int(s) for s in shape)
    size = [min(edge, max(2, int(round(crop * edge * int(s) / longest)))) for s in shape]
    start = [int(rng.integers(0, edge - n + 1)) for n in size]
    return {"entry": entry, "perm": perm, "flip": flip, "box_start": start, "box_size": size}


def oriented_box(bank: torch.Tensor, placement: dict[str, Any]) -> torch.Tensor:
    """The placement's entry of ``bank`` (entries, e, e, e), permuted, flipped and cut to its box.

    The result may share memory with ``bank``: do not modify it in place.
    """
    k = int(placement["entry"])
    if not 0 <= k < bank.shape[0]:
        raise ValueError(f"bank entry {k} out of range: the bank has {bank.shape[0]} entries")
    block = bank[k].permute(*[int(p) for p in placement["perm"]])
    dims = [d for d, f in enumerate(placement["flip"]) if f]
    if dims:
        block = block.flip(dims)
    for d, (s, n) in enumerate(zip(placement["box_start"], placement["box_size"])):
        if int(s) < 0 or int(n) < 1 or int(s) + int(n) > block.shape[d]:
            raise ValueError(f"box {placement['box_start']}+{placement['box_size']} exceeds the "
                             f"bank's {tuple(block.shape)} cube")
        block = block.narrow(d, int(s), int(n))
    return block.contiguous()


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sources and weights of 1D linear resampling from ``n_in`` to ``n_out`` samples
    (``align_corners=False``, edge-clamped): output j = w0[j]·x[i0[j]] + w1[j]·x[i1[j]].

    Computed in float64 with basic arithmetic only (exact IEEE operations, the same on every
    machine), weights rounded to float32 once.
    """
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, (1.0 - w1).astype(np.float32), w1.astype(np.float32)


#: bytes of output per step of the last (z) pass on the CPU: a few planes, so the two gathered
#: operands stay in cache (measured at 256³ and 512³ on cpu2 against whole-volume gathers)
_CPU_STEP_BYTES = 4 * 1024 * 1024


def _lerp_dim(x: torch.Tensor, dim: int, n_out: int, step_bytes: int | None = None) -> torch.Tensor:
    """One linear pass of :func:`resample` along ``dim``: two gathers, two products, one sum.

    With ``step_bytes`` (``dim`` 0 only) the output is made a few planes at a time, the same
    operations per element (the same bytes) with the operands in cache.
    """
    i0, i1, w0, w1 = (torch.as_tensor(v, device=x.device) for v in linear_taps(int(x.shape[dim]), n_out))
    view = [1] * x.ndim
    view[dim] = -1
    w0, w1 = w0.reshape(view), w1.reshape(view)
    if step_bytes is None:
        return lerp_select(x, dim, i0, i1, w0, w1)
    plane = max(1, x[0].numel() * x.element_size())
    step = max(1, step_bytes // plane)
    out = torch.empty((n_out, *x.shape[1:]), dtype=x.dtype, device=x.device)
    tmp = torch.empty((min(step, n_out), *x.shape[1:]), dtype=x.dtype, device=x.device)
    for j in range(0, n_out, step):
        k = min(j + step, n_out)
        lerp_select(x, 0, i0[j:k], i1[j:k], w0[j:k], w1[j:k], out=out[j:k], tmp=tmp[: k - j])
    return out


def resample(block: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Trilinear (``align_corners=False``, edge-clamped) resampling of a (z, y, x) float32 block to
    ``shape``; a new tensor on the block's device.

    The weights are ``F.interpolate(mode="trilinear")``'s (computed in float64 here, so they can
    differ from its float32 ones in the last bits). Separable: one linear pass per axis, each
    output the sum of two rounded products, every product and sum a separate elementwise op. No
    fused multiply-add can enter, so the bytes are the same on every CPU vector width and thread
    count, and by construction on a GPU (not yet compared there). A library interpolation kernel
    rounds differently with and without FMA: 20-40 % of ``F.interpolate``'s outputs differ between
    torch's AVX2 and scalar CPU kernels.
    """
    out = block
    for dim in (2, 1):  # x, y first: the smallest intermediates when enlarging
        if int(out.shape[dim]) != int(shape[dim]):
            out = _lerp_dim(out, dim, int(shape[dim]))
    if int(out.shape[0]) != int(shape[0]):
        step = _CPU_STEP_BYTES if out.device.type == "cpu" else None  # a GPU: one launch per op
        out = _lerp_dim(out, 0, int(shape[0]), step)
    return out if out is not block else block.clone()


def place(bank: torch.Tensor, placement: dict[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    """The placed entry of ``bank``: float32 (Z, Y, X) on the bank's device."""
    return resample(oriented_box(bank, placement), shape)


def crack_field(
    cracks: torch.Tensor,
    perlin_lo: torch.Tensor,
    layers: list[dict[str, Any]],
    modulation: dict[str, Any],
    shape: tuple[int, ...],
) -> torch.Tensor:
    """The assembled ice-crack field of a volume: float32 (Z, Y, X) in [0, 1].

    As the reference (§2.4: each factor min–max normalised, crack field = crack × Perlin): the
    layers' boxes (all of one size) are combined by a voxelwise maximum on their own grid and
    min–max normalised, multiplied by the low-frequency Perlin placement resampled to that grid and
    min–max normalised (a crop of a bank volume need not span [0, 1] by itself), and the product is
    resampled once onto the volume (linear interpolation keeps [0, 1]). The product is not
    normalised again: where the cracks and the Perlin peaks miss each other its maximum stays
    below 1, as in the reference. Assembling on the bank's grid keeps the per-sample cost at one
    full-volume interpolation.
    """
    if not layers:
        raise ValueError("ice cracks need at least one layer")
    boxes = [oriented_box(cracks, layer) for layer in layers]
    if len({tuple(b.shape) for b in boxes}) != 1:
        raise ValueError(f"crack layers need boxes of one size, got {[tuple(b.shape) for b in boxes]}")
    field = boxes[0].clone()  # a box may be a view of the bank itself
    for b in boxes[1:]:
        torch.maximum(field, b, out=field)
    field = unit_range(field) * unit_range(place(perlin_lo, modulation, tuple(field.shape)))
    return resample(field, shape)


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Min–max normalised to [0, 1] (all zeros when ``x`` is constant): one pass for the range and one
    subtraction and in-place division (the same float32 operations as ``(x - lo) / (hi - lo)``)."""
    lo, hi = torch.aminmax(x)
    span = hi - lo
    # a constant x is all lo: 0 / 1; no branch on the device's value (no CUDA synchronisation)
    return (x - lo).div_(torch.where(span > 0, span, 1.0))
