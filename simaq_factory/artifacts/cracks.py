"""Ice-crack blocks by region competition on a random cost field (reference §2.4, our generator).

The paper describes a seeded region growing in which regions expand by local weights and
propagation costs and the boundaries between competing regions become branching crack surfaces;
its code was not released. We build one cubic block of edge ``b`` voxels as follows:

1. cost field c = exp(contrast · n), n = white noise smoothed by a Gaussian of ``cost_sigma`` voxels
   and divided by its theoretical standard deviation, (Σ k²)^{3/2} for the separable kernel k (no
   reduction, so nothing depends on the thread count);
2. K seeds at distinct random voxels, each with a growth speed exp(speed_spread · N(0, 1)) (the
   "local weights": fast regions push their walls towards slow ones);
3. multi-source region competition: arrival time T and label L per voxel satisfy
   T(v) = min over neighbours u of T(u) + ½(c(u) + c(v))·|u − v| / speed(L(u)), L(v) = L(argmin),
   i.e. a geodesic (Dijkstra-like) labelling on the 26- (or 18-, 6-) neighbour graph. It is solved
   by Gauss–Seidel sweeps: a sweep runs once through the block along one axis and direction,
   relaxing each slice from its neighbours in the previous slice; six sweeps (3 axes × 2
   directions) make a round, repeated until nothing changes. Sweeps only lower arrival times, so a
   voxel reached through one that a faster region claims later keeps a time its own region can no
   longer back; such stale chains are found by following predecessor links (pointer jumping),
   reset and swept again, so every region is the connected set its seed reaches first;
4. walls: each pair of regions keeps its wall with probability ``wall_fraction`` (1 keeps the
   closed foam of the paper's description; less leaves branching, open-ended crack networks);
   crack voxels = voxels with a 6-neighbour of a *higher* label across a kept wall (one voxel
   thick, on one side of each wall, so a crack voxel touches the regions it separates);
5. optional Gaussian blur of ``blur_sigma`` voxels, then min–max normalisation to [0, 1].

Every random number comes from a ``numpy.random.Generator`` per block (drawn on the host), and
every torch operation is elementwise (each product and sum rounded on its own, no fused
multiply-add), a fixed-order sum, a gather or an argmin with first-index ties, so a block is
bitwise identical for any CPU thread count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simaq_factory import portable_math
from simaq_factory.artifacts.blur import gaussian_blur_3d, gaussian_kernel_1d, kernel_radius
from simaq_factory.device import one_torch_thread

logger = logging.getLogger(__name__)

__all__ = ["cost_field", "region_labels", "crack_voxels", "crack_blocks"]

_LOG_CAP = 30.0  # exp(±30) stays finite in float32 with room for path sums


def cost_field(noise: torch.Tensor, sigma: float, contrast: float) -> torch.Tensor:
    """Positive cost exp(contrast · smoothed noise); ``noise`` (n, b, b, b) float32 standard normal.

    The smoothed noise is divided by its theoretical standard deviation, sqrt((Σ k²)³) for the
    separable kernel k, rather than a measured one, so the result depends on no reduction order.
    """
    if sigma > 0:
        radius = kernel_radius(sigma, 3.0, None)
        k = gaussian_kernel_1d(sigma, radius, torch.device("cpu"))
        std = float(torch.sum(k * k)) ** 1.5
        smooth = torch.stack([gaussian_blur_3d(v, sigma, radius) for v in noise]) / std
    else:
        smooth = noise.float()
    return torch.exp((smooth * contrast).clamp(-_LOG_CAP, _LOG_CAP))


def _step_lengths(neighbourhood: int, device: torch.device) -> torch.Tensor:
    """(3, 3, 1, 1, 1) float32 half step lengths to the previous slice's neighbours at (dy, dx).

    Neighbours outside the neighbourhood get ``_FAR`` (never chosen).
    """
    out = torch.empty((3, 3), dtype=torch.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            off = abs(dy) + abs(dx)
            used = neighbourhood == 26 or (neighbourhood == 18 and off <= 1) or off == 0
            out[dy + 1, dx + 1] = 0.5 * math.sqrt(1 + off) if used else _FAR
    return out.reshape(3, 3, 1, 1, 1).to(device)


def _window(padded: torch.Tensor) -> torch.Tensor:
    """(3, 3, n, h, w) view (no copy) of the shifted windows of a padded (n, h + 2, w + 2) slice."""
    n, hp, wp = padded.shape
    s0, s1, s2 = padded.stride()
    return padded.as_strided((3, 3, n, hp - 2, wp - 2), (s1, s2, s0, s1, s2))


_FAR = 1.0e30  # "not reached yet" and the border: finite, so differences never give NaN


def _sweep(
    t: torch.Tensor,
    lab: torch.Tensor,
    inv: torch.Tensor,
    cost: torch.Tensor,
    half_len: torch.Tensor,
    reverse: bool,
    dirty: np.ndarray | None = None,
    axes: tuple[int, int, int] = (1, 2, 3),
) -> None:
    """One Gauss–Seidel pass along dim 0 of padded (P, n, P, P) contiguous fields, in place.

    The fields carry a one-voxel border on every spatial side: ``t`` arrival times (float32,
    ``_FAR`` when not reached and on the border), ``lab`` labels (int32, −1 = none), ``inv`` the
    1/speed of each voxel's region (float32, 1 where none), ``cost`` (float32 > 0, ``_FAR`` on the
    border); ``half_len`` (3, 3, 1, 1, 1) half step lengths. Interior slice i is relaxed from
    slice i ∓ 1 only. The chosen neighbour is the first of the nine (row-major (dy, dx)) with the
    minimal candidate time, so the result is deterministic.

    ``dirty`` (4, 2, P) bool, when given, says per (block-layout axis, direction, padded slice)
    whether that slice changed since a pass of that axis and direction last relaxed its successor
    from it; ``axes`` are the layout axes of dims 0, 2 and 3 here. A step whose source slice is
    clean is skipped: its candidates are those it computed last time, and the target's times have
    only fallen since, so it would change nothing (the result is the same bytes). Every change is
    marked in the flags of the slices (of all three axes) that hold it.
    """
    p, n = t.shape[0], t.shape[1]
    b = p - 2
    dev = t.device
    pos = (torch.arange(b, device=dev)[:, None] * p + torch.arange(b, device=dev)[None, :])
    pos = pos.reshape(1, b * b).expand(n, b * b)
    # padded flat offset of neighbour a = 3·(dy + 1) + (dx + 1); increasing in a, so the smallest
    # key among tied candidates is the first of them
    shift = torch.tensor([(a // 3) * p + a % 3 for a in range(9)], dtype=torch.float32, device=dev)
    shift = shift.reshape(9, 1)
    big = float(4 * p)  # > every shift
    order = range(b - 1, 0, -1) if reverse else range(2, b + 1)
    step = 1 if reverse else -1
    cand = torch.empty((3, 3, n, b, b), dtype=torch.float32, device=dev)
    key = torch.empty((9, n * b * b), dtype=torch.float32, device=dev)
    direction = int(reverse)
    for i in order:
        j = i + step  # the previous slice in sweep order, already final for this pass
        if dirty is not None:
            if not dirty[axes[0], direction, j]:
                continue
            dirty[axes[0], direction, j] = False
        inv_j = inv[j]
        # cand(dy, dx) = t_u + ½ (c_u + c_v) · len / speed_u, u = (j, y + dy, x + dx), v = (i, y, x);
        # written into one contiguous buffer (ops on the overlapping window views would otherwise
        # return a strided layout that makes the reduction slow)
        torch.mul(_window(inv_j), cost[i, :, 1:-1, 1:-1], out=cand)
        cand.add_(_window(cost[j] * inv_j)).mul_(half_len).add_(_window(t[j]))
        flat_c = cand.view(9, -1)
        best = torch.amin(flat_c, dim=0)
        # key = shift_a where cand_a is minimal, shift_a + big elsewhere (sign(cand − best) ∈ {0, 1})
        torch.sub(flat_c, best, out=key)
        key.sign_().mul_(big).add_(shift)
        off = torch.amin(key, dim=0).to(torch.int64).reshape(n, b * b)
        flat = pos + off
        ti = t[i, :, 1:-1, 1:-1]
        better = best.reshape(n, b, b) < ti
        torch.minimum(ti, best.reshape(n, b, b), out=ti)
        src_lab = torch.gather(lab[j].reshape(n, -1), 1, flat).reshape(n, b, b)
        src_inv = torch.gather(inv_j.reshape(n, -1), 1, flat).reshape(n, b, b)
        li = lab[i, :, 1:-1, 1:-1]
        torch.where(better, src_lab, li, out=li)
        vi = inv[i, :, 1:-1, 1:-1]
        torch.where(better, src_inv, vi, out=vi)
        if dirty is not None:
            changed = better.cpu().numpy()  # numpy: its reductions over small bool arrays are ~4× torch's
            if changed.any():
                plane = changed.any(axis=0)
                dirty[axes[0], :, i] = True
                dirty[axes[1], :, 1:-1] |= plane.any(axis=1)
                dirty[axes[2], :, 1:-1] |= plane.any(axis=0)


def region_labels(
    cost: torch.Tensor,
    seeds: torch.Tensor,
    inv_speed: torch.Tensor,
    *,
    neighbourhood: int = 26,
    max_rounds: int = 12,
    max_repairs: int = 8,
) -> torch.Tensor:
    """Multi-source region competition on ``n`` blocks; returns labels (n, b, b, b) int64.

    Args:
        cost: (n, b, b, b) positive float32 propagation cost per voxel (below 1e20).
        seeds: (n, K, 3) int64 seed voxels (z, y, x), distinct within a block.
        inv_speed: (n, K) float32, 1/speed of each seed's region.
        neighbourhood: 6, 18 or 26 (step lengths 1, √2, √3).
        max_rounds: cap on rounds of six sweeps. Rounds stop when one changes no label; a warning
            is logged if the cap is reached (the result is still deterministic).
        max_repairs: cap on repairs of stale chains (:func:`_stale_chains`): after the sweeps
            settle, voxels reached through a voxel that another region claimed later are reset
            and swept again, until every voxel's time is backed by its own region.

    Label k is seed k's region (0 … K−1); every voxel is reached. Ties keep the earlier value.
    """
    if neighbourhood not in (6, 18, 26):
        raise ValueError(f"neighbourhood must be 6, 18 or 26, got {neighbourhood}")
    if cost.ndim != 4 or len({*cost.shape[1:]}) != 1:
        raise ValueError(f"cost must be (n, b, b, b), got {tuple(cost.shape)}")
    n = cost.shape[0]
    dev = cost.device
    k = seeds.shape[1]
    pad = (1, 1, 1, 1, 1, 1)
    shape = (n,) + tuple(s + 2 for s in cost.shape[1:])
    t = torch.full(shape, _FAR, dtype=torch.float32, device=dev)
    lab = torch.full(shape, -1, dtype=torch.int32, device=dev)
    inv = torch.ones(shape, dtype=torch.float32, device=dev)
    bi = torch.arange(n, device=dev)[:, None].expand(n, k)
    idx = (bi, seeds[..., 0] + 1, seeds[..., 1] + 1, seeds[..., 2] + 1)
    t[idx] = 0.0
    lab[idx] = torch.arange(k, device=dev, dtype=torch.int32)[None].expand(n, k)
    inv[idx] = inv_speed.to(device=dev, dtype=torch.float32)
    half_len = _step_lengths(neighbourhood, dev)
    fields = [t, lab, inv]
    # the swept axis is moved first (blocks second) so that slices are contiguous; ``at`` is the
    # axis of the (n, z, y, x) layout now in front, and each move is a single copy. The cost never
    # changes: its three layouts are made once.
    padded_cost = F.pad(cost.float(), pad, value=_FAR)
    costs = {axis: padded_cost.movedim(axis, 0).contiguous() for axis in (1, 2, 3)}
    at = 0
    seed_mask = torch.zeros(shape, dtype=torch.bool, device=dev)
    seed_mask[idx] = True
    rounds = 0
    # which slices changed since each pass direction last relaxed from them (see _sweep); all
    # at first. Indexed (layout axis 1-3, direction, padded slice); a cube, so one length P.
    dirty = np.ones((4, 2, shape[1]), dtype=bool)
    for repair in range(max_repairs + 1):
        for _ in range(max_rounds):
            if not dirty.any():
                break  # no pass has a slice to relax from: the round would change nothing
            rounds += 1
            before = fields[1].clone()
            for axis in (1, 2, 3):
                if not dirty[axis].any():
                    continue
                fields = [f.movedim(0, at).movedim(axis, 0).contiguous() for f in fields]
                at = axis
                others = tuple(a for a in (1, 2, 3) if a != axis)
                for reverse in (False, True):
                    _sweep(*fields, costs[axis], half_len, reverse, dirty, (axis, *others))
            if torch.equal(before, fields[1]):
                break
        else:
            logger.warning("region competition: sweeps not converged after %d rounds", max_rounds)
        fields = [f.movedim(0, at).contiguous() for f in fields]  # back to (n, z, y, x)
        at = 0
        stale = _stale_chains(*fields, padded_cost, seed_mask, neighbourhood)
        n_stale = int(stale.sum())
        if n_stale == 0:
            logger.debug("region competition converged: %d rounds, %d repairs", rounds, repair)
            break
        # voxels whose arrival time came through a voxel another region claimed later: forget them
        # (and everything reached through them) and let the sweeps claim them again
        fields[0].masked_fill_(stale, _FAR)
        fields[1].masked_fill_(stale, -1)
        fields[2].masked_fill_(stale, 1.0)
        # a reset voxel must be relaxed again from its neighbours' slices (unchanged, so clean)
        # and its own slices changed: flag both, in every axis and direction
        for axis in (1, 2, 3):
            hit = stale.any(dim=tuple(d for d in range(4) if d != axis)).cpu().numpy()
            near = hit | np.roll(hit, 1) | np.roll(hit, -1)
            dirty[axis, :, near] = True
    else:
        logger.warning("region competition: %d stale voxels left after %d repairs", n_stale, max_repairs)
    return fields[1][:, 1:-1, 1:-1, 1:-1].to(torch.int64)


def _stale_chains(
    t: torch.Tensor,
    lab: torch.Tensor,
    inv: torch.Tensor,
    cost: torch.Tensor,
    seed_mask: torch.Tensor,
    neighbourhood: int,
) -> torch.Tensor:
    """Voxels whose arrival time is not backed by a chain of same-region voxels back to the seed.

    Padded (n, Z + 2, Y + 2, X + 2) fields. Sweeps only ever lower arrival times, so a voxel v
    reached through u keeps its time after a faster region claims u: v's region then holds voxels
    that its own region cannot reach, which the competition forbids (they would make regions
    disconnected). A voxel's predecessor is the first 26-neighbour u of the same region whose
    candidate T(u) + ½(c_u + c_v)·|u − v|/speed_u, computed with exactly the sweep's float ops, is
    at most T(v) (one always exists for a consistent voxel: T(u) only decreases after v was set).
    Candidates are strictly above T(u), so predecessor links form a forest rooted at the seeds;
    staleness (no predecessor) is spread down it by pointer jumping in O(log depth) gathers.
    """
    n, zp, yp, xp = t.shape
    dev = t.device
    z, y, x = zp - 2, yp - 2, xp - 2
    flat_index = torch.arange(n * zp * yp * xp, device=dev).reshape(n, zp, yp, xp)
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    t_v, lab_v, c_v = t[inner], lab[inner], cost[inner]
    cost_inv = cost * inv  # the sweep's c_u / speed_u, rounded as there
    steps = [
        (dz, dy, dx)
        for dz in (-1, 0, 1)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if 0 < abs(dz) + abs(dy) + abs(dx) <= {6: 1, 18: 2, 26: 3}[neighbourhood]
    ]
    # code of each voxel's predecessor: the index in ``steps`` of its first qualifying neighbour,
    # len(steps) for none. Visiting the steps last to first and overwriting leaves the first.
    none = len(steps)
    code = torch.full((n, z, y, x), none, dtype=torch.uint8, device=dev)
    ok = torch.empty((n, z, y, x), dtype=torch.bool, device=dev)
    same = torch.empty((n, z, y, x), dtype=torch.bool, device=dev)
    for a in range(none - 1, -1, -1):
        dz, dy, dx = steps[a]
        hl = torch.tensor(0.5 * math.sqrt(abs(dz) + abs(dy) + abs(dx)), dtype=torch.float32, device=dev)
        u = (slice(None), slice(1 + dz, 1 + dz + z), slice(1 + dy, 1 + dy + y), slice(1 + dx, 1 + dx + x))
        cand = inv[u] * c_v
        cand.add_(cost_inv[u]).mul_(hl).add_(t[u])
        torch.le(cand, t_v, out=ok)
        torch.eq(lab[u], lab_v, out=same)
        code.masked_fill_(ok.logical_and_(same), a)
    offsets = torch.tensor([dz * yp * xp + dy * xp + dx for dz, dy, dx in steps] + [0], device=dev)
    has_pred = code != none
    own = flat_index[inner]
    reached = lab_v >= 0
    bad_inner = reached & ~has_pred & ~seed_mask[inner]
    pointer = flat_index.clone()
    pointer[inner] = own + offsets[code.long()]
    bad = torch.zeros(t.shape, dtype=torch.bool, device=dev)
    bad[inner] = bad_inner
    if not bool(bad_inner.any()):
        return bad
    pointer, bad = pointer.reshape(-1), bad.reshape(-1)
    while True:  # pointer jumping: after k steps every voxel looks 2^k links up its chain
        bad = bad | bad[pointer]
        nxt = pointer[pointer]
        if torch.equal(nxt, pointer):
            break
        pointer = nxt
    return bad.reshape(t.shape)


def crack_voxels(labels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of voxels with a 6-neighbour of a higher label; ``labels`` (n, Z, Y, X) int64.

    Each wall is marked on its lower-label side only, one voxel thick. ``keep`` (n, K, K) bool,
    when given, selects the walls: a pair (a, b) of regions of block e is a crack only where
    ``keep[e, a, b]`` (use a symmetric table).
    """
    out = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    if keep is not None:
        n, k = keep.shape[0], keep.shape[1]
        table = keep.reshape(-1)
        base = (torch.arange(n, device=labels.device) * k * k).reshape(n, 1, 1, 1)
    for dim in (1, 2, 3):
        m = labels.shape[dim]
        a = labels.narrow(dim, 0, m - 1)
        c = labels.narrow(dim, 1, m - 1)
        if keep is None:
            lo_first, hi_first = a < c, c < a
        else:
            kept = table[base + torch.minimum(a, c) * k + torch.maximum(a, c)]
            lo_first, hi_first = (a < c) & kept, (c < a) & kept
        out.narrow(dim, 0, m - 1).logical_or_(lo_first)
        out.narrow(dim, 1, m - 1).logical_or_(hi_first)
    return out


def _draw_block(
    rng: np.random.Generator, size: int, seeds: int, speed_spread: float, wall_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One block's random draws, in a fixed order: noise, seed voxels, speeds, kept walls."""
    noise = rng.standard_normal((size, size, size), dtype=np.float32)
    flat = rng.choice(size**3, size=seeds, replace=False)
    pos = np.stack(np.unravel_index(flat, (size,) * 3), axis=-1).astype(np.int64)
    speed = portable_math.exp(speed_spread * rng.standard_normal(seeds))
    upper = rng.random((seeds, seeds)) < wall_fraction
    keep = np.triu(upper, 1)
    keep = keep | keep.T
    return noise, pos, speed, keep


def crack_blocks(
    rngs: Sequence[np.random.Generator],
    size: int,
    *,
    seeds: int,
    cost_sigma: float,
    cost_contrast: float,
    speed_spread: float,
    wall_fraction: float,
    blur_sigma: float,
    neighbourhood: int,
    device: torch.device,
) -> torch.Tensor:
    """One crack block of edge ``size`` per generator: float32 (n, size, size, size) in [0, 1].

    Block e draws everything from ``rngs[e]`` alone (see :func:`_draw_block`), so a block does not
    depend on how many others are made with it. The blocks are relaxed together on ``device`` (on
    the CPU with one torch thread: the relaxation is a long chain of small ops, one slice at a time,
    where extra threads mostly add synchronisation; on a busy machine they made it 5-200× slower,
    4 blocks of 128³: 17 s on one thread, 84 s on two, identical bytes).
    """
    if seeds < 2 or seeds > size**3:
        raise ValueError(f"need 2 <= seeds <= size³, got seeds={seeds}, size={size}")
    draws = [_draw_block(r, size, seeds, speed_spread, wall_fraction) for r in rngs]
    noise, pos, speed, keep = (np.stack(parts) for parts in zip(*draws))
    with one_torch_thread(device):
        cost = cost_field(torch.from_numpy(noise).to(device), cost_sigma, cost_contrast)
        labels = region_labels(
            cost,
            torch.from_numpy(pos).to(device),
            torch.from_numpy(1.0 / speed).to(device=device, dtype=torch.float32),
            neighbourhood=neighbourhood,
        )
        crack = crack_voxels(labels, torch.from_numpy(keep).to(device)).float()
        if blur_sigma > 0:
            radius = kernel_radius(blur_sigma, 3.0, None)
            crack = torch.stack([gaussian_blur_3d(c, blur_sigma, radius) for c in crack])
        lo = crack.amin(dim=(1, 2, 3), keepdim=True)
        hi = crack.amax(dim=(1, 2, 3), keepdim=True)
        return (crack - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
