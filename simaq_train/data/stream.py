"""The epoch stream: windows along the tilt axis, shuffled, filtered, mixed, batched, resumable.

A *window* is a row ``(source, volume, z)``: the ``window`` slices centred on ``z`` of a volume's
normalised reconstruction (ends reflect- or replicate-padded, or excluded with ``skip``) with the
labels of slice ``z`` as target. Candidates are the slices with at least one annotated pixel.

The epoch plan is a pure function of ``(seed, epoch)`` and the sources' slice index:

1. background-only synthetic windows are dropped with probability ``background_drop`` (one
   uniform per candidate, drawn for all candidates);
2. synthetic volumes are permuted and grouped into blocks of ``shuffle_volumes``; windows are
   permuted within a block (bounded memory for the volume cache);
3. each batch gets ``Binomial(batch_size, real.ratio)`` real windows (drawn cyclically from
   shuffled passes over the real windows) and is filled with the next synthetic windows; the epoch
   ends when every kept synthetic window has been used exactly once;
4. with ``world`` ranks, the last ``B mod world`` batches are re-split into ``world`` batches so
   every rank gets the same number of batches and still every window exactly once (only when the
   tail holds fewer than ``world`` windows are windows from the start of the epoch repeated).

Batch ``j`` goes to distributed rank ``j % world``; the k-th of a rank's batches from ``position``
on goes to DataLoader worker ``k % W``, so the in-order DataLoader returns them in plan order.
The resumable state is ``(epoch, position)``: batches ``< position`` of the epoch are consumed;
``position`` is always a multiple of ``world``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from simaq_train.config import TrainConfig
from simaq_train.data.augment import augment
from simaq_train.data.normalize import fov_mask
from simaq_train.data.sources import IGNORE, SliceIndex

log = logging.getLogger(__name__)


def window_indices(z: int, depth: int, window: int, mode: str) -> np.ndarray:
    """Slice indices of the window centred on ``z`` in a volume of ``depth`` slices
    (``reflect`` mirrors without repeating the end slice, like ``numpy.pad(mode='reflect')``)."""
    half = window // 2
    idx = np.arange(z - half, z + half + 1)
    if mode == "replicate" or depth == 1:
        return np.clip(idx, 0, depth - 1)
    period = 2 * (depth - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= depth, period - idx, idx)


def build_table(indices: list[list[SliceIndex]], window: int, edge_mode: str,
                real_source: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All candidate windows: rows (source, volume, z) int64 and a background-only flag
    (always False for real windows: they are never dropped)."""
    rows, bg = [], []
    half = window // 2
    for s, vols in enumerate(indices):
        for v, ix in enumerate(vols):
            depth = len(ix.labelled)
            lo, hi = (half, depth - half) if edge_mode == "skip" else (0, depth)
            zs = np.nonzero(ix.labelled[lo:hi])[0] + lo
            rows.append(np.stack([np.full_like(zs, s), np.full_like(zs, v), zs], axis=1))
            bg.append(~ix.foreground[zs] if s != real_source else np.zeros(len(zs), bool))
    if not rows:
        return np.zeros((0, 3), np.int64), np.zeros(0, bool)
    return np.concatenate(rows).astype(np.int64), np.concatenate(bg).astype(bool)


def _split_tail(plan: list[np.ndarray], world: int, filler: np.ndarray) -> list[np.ndarray]:
    """Re-split the last ``len(plan) % world`` batches into ``world`` batches (step 4)."""
    r = len(plan) % world
    if r == 0:
        return plan
    tail = np.concatenate(plan[-r:])
    if len(tail) < world:
        need = world - len(tail)
        tail = np.concatenate([tail, np.resize(filler, need) if len(filler) else np.resize(tail, need)])
    return plan[:-r] + [np.asarray(p, np.int64) for p in np.array_split(tail, world)]


def epoch_plan(table: np.ndarray, bg: np.ndarray, real_source: int | None, cfg: TrainConfig,
               epoch: int, world: int = 1) -> list[np.ndarray]:
    """Row indices into ``table`` of every batch of ``epoch`` (see module docstring)."""
    d, batch = cfg.data, cfg.optim.batch_size
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(epoch,)))
    n = len(table)
    is_real = table[:, 0] == real_source if real_source is not None else np.zeros(n, bool)
    drop = rng.random(n) < d.background_drop
    syn_rows = np.nonzero(~is_real & ~(bg & drop))[0]
    # volumes in a random order, grouped in blocks; windows shuffled inside each block
    vol_key = table[syn_rows, 0] * (1 << 32) + table[syn_rows, 1]
    volumes, vol_of_row = np.unique(vol_key, return_inverse=True)
    rank_of_volume = np.empty(len(volumes), np.int64)
    rank_of_volume[rng.permutation(len(volumes))] = np.arange(len(volumes))
    block = rank_of_volume[vol_of_row] // d.shuffle_volumes
    syn = syn_rows[np.lexsort((rng.random(len(syn_rows)), block))]
    real_rows = np.nonzero(is_real)[0]
    ratio = d.real.ratio if len(real_rows) else 0.0
    plan: list[np.ndarray] = []
    pos, real_pos, real_order = 0, 0, np.zeros(0, np.int64)
    while pos < len(syn):
        n_real = int(rng.binomial(batch, ratio)) if ratio > 0 else 0
        n_syn = batch - n_real
        take = syn[pos : pos + n_syn]
        pos += n_syn
        if len(take) < n_syn and d.drop_last:
            break
        reals = np.zeros(n_real, np.int64)
        for i in range(n_real):
            if real_pos >= len(real_order):
                real_order, real_pos = real_rows[rng.permutation(len(real_rows))], 0
            reals[i] = real_order[real_pos]
            real_pos += 1
        plan.append(np.concatenate([take, reals]))
    if world > 1:
        plan = plan[: len(plan) // world * world] if d.drop_last else _split_tail(plan, world, syn)
    return plan


def next_position(j: int, world: int) -> int:
    """Epoch position after batch ``j`` has been consumed on every rank."""
    return (j // world + 1) * world


class WindowStream(IterableDataset):
    """Yields ``{"index": j, "image": (B, 1, W, H, X) float32, "target": (B, H, X) int64,
    "real": (B,) bool}`` for this rank's and worker's batches ``j >= position`` of the epoch."""

    def __init__(self, sources: list[Any], indices: list[list[SliceIndex]], cfg: TrainConfig,
                 real_source: int | None = None, rank: int = 0, world: int = 1) -> None:
        super().__init__()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of {world}")
        self.sources = sources
        self.cfg = cfg
        self.real_source = real_source
        self.rank, self.world = rank, world
        self.table, self.bg = build_table(indices, cfg.data.window, cfg.data.edge_mode, real_source)
        self.epoch, self.position = 0, 0
        self._plans: dict[int, list[np.ndarray]] = {}
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._fovs: dict[tuple[int, ...], np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to DataLoader workers) without the volume cache."""
        return {**self.__dict__, "_cache": OrderedDict(), "_fovs": {}}

    # -- resumable state ------------------------------------------------------------------------
    def set_state(self, epoch: int, position: int = 0) -> None:
        if position % self.world:
            raise ValueError(f"position {position} is not a multiple of world {self.world}")
        self.epoch, self.position = int(epoch), int(position)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_state(state["epoch"], state["position"])

    # -- plan -----------------------------------------------------------------------------------
    def plan(self, epoch: int | None = None) -> list[np.ndarray]:
        e = self.epoch if epoch is None else epoch
        if e not in self._plans:
            self._plans = {e: epoch_plan(self.table, self.bg, self.real_source, self.cfg, e, self.world)}
        return self._plans[e]

    def my_batches(self) -> range:
        """Plan indices of this rank's remaining batches in the current epoch."""
        return range(self.position + self.rank, len(self.plan()), self.world)

    def __len__(self) -> int:
        """Remaining batches of the current epoch for this rank (all workers together)."""
        return len(self.my_batches())

    # -- samples --------------------------------------------------------------------------------
    def _volume(self, s: int, v: int) -> tuple[np.ndarray, np.ndarray]:
        key = (s, v)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        vol = self.sources[s].load(v)
        self._cache[key] = vol
        while len(self._cache) > self.cfg.data.shuffle_volumes + 1:
            self._cache.popitem(last=False)
        return vol

    def _fov(self, s: int, v: int, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """In-plane field of view (H, W) bool of volume ``(s, v)``. Synthetic volumes: the disc
        :func:`fov_mask` of their slices with ``data.fov_margin``, exactly the one their
        normalisation and labels used. Real volumes were centre-cropped or padded to the training
        shape after normalisation, so their disc is not known here: the positions where any slice
        is nonzero or labelled (outside the field of view every slice is exactly 0 and 255; inside,
        a whole column of exact zeros needs every voxel tied at the median intensity)."""
        if s != self.real_source:
            key: tuple[int, ...] = (-1, *image.shape[1:])
            if key not in self._fovs:
                self._fovs[key] = fov_mask(image.shape[1:], self.cfg.data.fov_margin)
        else:
            key = (s, v)
            if key not in self._fovs:
                self._fovs[key] = np.any(image != 0, axis=0) | np.any(labels != IGNORE, axis=0)
        return self._fovs[key]

    def sample(self, row: int, epoch: int, j: int, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``row`` of the table, augmented with the generator of (seed, epoch, batch, slot)."""
        s, v, z = (int(x) for x in self.table[row])
        image, labels = self._volume(s, v)
        idx = window_indices(z, image.shape[0], self.cfg.data.window, self.cfg.data.edge_mode)
        rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed, spawn_key=(epoch, j, slot, 1)))
        img, lab = image[idx], labels[z]
        fov = self._fov(s, v, image, labels) if self.cfg.augment.enable else None
        c = self.cfg.data.crop
        if c:  # a random in-plane crop (training only; evaluation and prediction use whole slices)
            oy, ox = (int(rng.integers(0, n - c + 1)) for n in lab.shape)
            img, lab = img[:, oy : oy + c, ox : ox + c], lab[oy : oy + c, ox : ox + c]
            fov = None if fov is None else fov[oy : oy + c, ox : ox + c]
        return augment(img, lab, rng, self.cfg.augment, fov)

    def make_batch(self, rows: np.ndarray, epoch: int, j: int) -> dict[str, Any]:
        imgs, labs = zip(*(self.sample(r, epoch, j, k) for k, r in enumerate(rows)))
        real = (self.table[rows, 0] == self.real_source) if self.real_source is not None else np.zeros(len(rows), bool)
        return {
            "index": j,
            "image": torch.from_numpy(np.stack(imgs)[:, None]),
            "target": torch.from_numpy(np.stack(labs).astype(np.int64)),
            "real": torch.from_numpy(np.asarray(real, bool)),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan()
        for k, j in enumerate(self.my_batches()):
            if k % nw == wid:
                yield self.make_batch(plan[j], self.epoch, j)
