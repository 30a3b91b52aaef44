"""Noise banks: Perlin volumes and ice-crack blocks built once per dataset from the recipe seed.

A bank is a float32 array (entries, e, e, e) of volumes, or (entries, e, e) of 2D maps, in [0, 1]:

============  ==============================================  ===================================
name          content                                         used for
============  ==============================================  ===================================
perlin_lo_3d  low-frequency Perlin cubes (perlin-numpy)        modulating the cracks (§2.4)
perlin_hi_3d  high-frequency fractal Perlin cubes              the ice texture (§2.5)
cracks        one-voxel crack sheets (region competition)      ice cracks (§2.4)
perlin_lo_2d  low-frequency Perlin maps (perlin-numpy)         flat-field flicker (§3.5)
============  ==============================================  ===================================

Seeding: entry ``e`` of bank number ``b`` (the order above) draws from
``SeedSequence(recipe.seed, spawn_key=(BANK_SPAWN_ROOT, b, e))``. Sample streams are
``SeedSequence(seed, spawn_key=(i,))`` with i < 2³²: a bank key has three words and starts with
2³² (two 32-bit words itself), so no bank stream coincides with a sample stream, adding a bank or
an entry changes no sample, and an entry does not depend on how many entries its bank has.

A bank's *spec* (:func:`bank_specs`) is the JSON of everything that determines its bytes; its
digest (:func:`array_sha256`) covers dtype, shape and data. Perlin banks are computed with numpy
(perlin-numpy, its gradients' trigonometry from the C library: ``portable_math.LibmGenerator``);
crack blocks with torch using only operations whose results do not depend on the thread count.
Builds and :func:`memory_banks` generate on the CPU, so a bank's bytes do not depend on where the
shards run (the crack generator also runs on CUDA, but equality with CPU bytes is not verified).
Stored banks (``store/banks.py``) are authoritative; :func:`memory_banks` builds them in memory for
library use of ``render_sample``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from perlin_numpy import generate_fractal_noise_2d, generate_fractal_noise_3d

from simaq_factory.artifacts.config import ArtifactsConfig, crack_block_edge
from simaq_factory.portable_math import LibmGenerator

if TYPE_CHECKING:  # torch is imported where banks are made or loaded: a dataset's bank specs
    import torch  # and digests are checked without it (simaq_factory._lazy)

logger = logging.getLogger(__name__)

__all__ = [
    "BANK_NAMES",
    "BANK_SPAWN_ROOT",
    "GENERATOR_VERSION",
    "NoiseBanks",
    "array_sha256",
    "bank_pieces",
    "bank_shape",
    "bank_specs",
    "generate_bank",
    "generate_piece",
    "generate_banks",
    "memory_banks",
]

#: order fixes each bank's seed stream (its index); new banks are appended so older ones keep their bytes
BANK_NAMES = ("perlin_lo_3d", "perlin_hi_3d", "cracks", "perlin_lo_2d")
BANK_SPAWN_ROOT = 2**32
GENERATOR_VERSION = 1  # bump when a generator's output changes for the same spec
_CRACK_BATCH_VOXELS = 2**23  # crack blocks relaxed together: ~4 blocks of 128³


@dataclass(frozen=True)
class NoiseBanks:
    """Loaded banks: ``arrays[name]`` float32 (entries, e, e[, e]) on one device, and their digests."""

    arrays: dict[str, torch.Tensor]
    sha256: dict[str, str]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.arrays[name]

    @property
    def device(self) -> torch.device:
        return next(iter(self.arrays.values())).device

    def to(self, device: torch.device) -> NoiseBanks:
        return NoiseBanks({k: v.to(device) for k, v in self.arrays.items()}, dict(self.sha256))


def bank_specs(cfg: ArtifactsConfig, shape: tuple[int, ...], seed: int) -> dict[str, dict[str, Any]]:
    """JSON spec of every bank for volumes of ``shape`` (z, y, x) and root ``seed``."""
    b = cfg.banks
    c = cfg.ice_cracks
    common = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "spawn_root": BANK_SPAWN_ROOT}
    specs: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(BANK_NAMES):
        spec: dict[str, Any] = {**common, "bank_index": index}
        if name == "cracks":
            spec.update(
                kind="cracks", entries=b.cracks.entries, edge=crack_block_edge(b.cracks, shape),
                seeds=c.seeds, cost_sigma=c.cost_sigma, cost_contrast=c.cost_contrast,
                speed_spread=c.speed_spread, wall_fraction=c.wall_fraction,
                thickness_sigma=c.thickness_sigma, neighbourhood=c.neighbourhood,
            )
        else:
            p = getattr(b, name)
            spec.update(kind="perlin_2d" if name == "perlin_lo_2d" else "perlin", entries=p.entries,
                        edge=p.edge, res=p.res, octaves=p.octaves, persistence=p.persistence)
        specs[name] = spec
    return specs


def bank_shape(spec: dict[str, Any]) -> tuple[int, ...]:
    """The array shape of the bank of ``spec``: (entries, e, e) for 2D maps, (entries, e, e, e) else."""
    ndim = 2 if spec["kind"] == "perlin_2d" else 3
    return (int(spec["entries"]),) + (int(spec["edge"]),) * ndim


def _entry_rng(spec: dict[str, Any], entry: int) -> np.random.Generator:
    key = (int(spec["spawn_root"]), int(spec["bank_index"]), int(entry))
    return np.random.default_rng(np.random.SeedSequence(int(spec["seed"]), spawn_key=key))


def _perlin_entry(spec: dict[str, Any], entry: int) -> np.ndarray:
    entry_shape = bank_shape(spec)[1:]
    generate = generate_fractal_noise_2d if len(entry_shape) == 2 else generate_fractal_noise_3d
    noise = generate(
        entry_shape, (int(spec["res"]),) * len(entry_shape), octaves=int(spec["octaves"]),
        persistence=float(spec["persistence"]), rng=LibmGenerator(_entry_rng(spec, entry)),
    )
    lo, hi = float(noise.min()), float(noise.max())
    out = (noise - lo) / (hi - lo) if hi > lo else np.zeros_like(noise)
    return out.astype(np.float32)


def _crack_batch(spec: dict[str, Any], ks: range, device: torch.device) -> np.ndarray:
    from simaq_factory.artifacts.cracks import crack_blocks

    blocks = crack_blocks(
        [_entry_rng(spec, k) for k in ks], int(spec["edge"]), seeds=int(spec["seeds"]),
        cost_sigma=float(spec["cost_sigma"]), cost_contrast=float(spec["cost_contrast"]),
        speed_spread=float(spec["speed_spread"]), wall_fraction=float(spec["wall_fraction"]),
        blur_sigma=float(spec["thickness_sigma"]), neighbourhood=int(spec["neighbourhood"]),
        device=device,
    )
    return blocks.cpu().numpy()


#: entries per piece of a Perlin bank handed out on its own (:func:`bank_pieces`): about 64³ voxels
_PIECE_VOXELS = 2**18


def bank_pieces(spec: dict[str, Any], parallel: int = 1) -> list[tuple[int, int]]:
    """Entry ranges ``[start, stop)`` of the bank of ``spec`` that can be generated independently.

    Crack blocks are split into about ``parallel`` pieces (at most ~128³·4 voxels each): blocks
    relaxed together share the per-sweep overhead (4 blocks of 64³ on one thread take 7.3 s
    together, 3.4 s each alone). Perlin entries are grouped to about 64³ voxels per piece.
    Concatenating :func:`generate_piece` over the pieces in order gives the bank, whatever the
    split: every entry draws from its own seed stream and is relaxed on its own.
    """
    n, entry_voxels = bank_shape(spec)[0], math.prod(bank_shape(spec)[1:])
    if spec["kind"] == "cracks":
        per = max(1, min(_CRACK_BATCH_VOXELS // entry_voxels, -(-n // max(1, int(parallel)))))
    else:
        per = max(1, _PIECE_VOXELS // entry_voxels)
    return [(start, min(n, start + per)) for start in range(0, n, per)]


def generate_piece(spec: dict[str, Any], start: int, stop: int) -> np.ndarray:
    """Entries ``[start, stop)`` of the bank of ``spec`` on the CPU, float32 host memory.

    Runs on one torch thread (the crack relaxation is a long chain of small ops that runs best so;
    no result depends on the thread count), restoring the caller's setting. This is the task a
    build hands to cluster workers (and to the driver's process pool).
    """
    if not 0 <= int(start) < int(stop) <= int(spec["entries"]):
        raise ValueError(f"entries [{start}, {stop}) outside the bank's {spec['entries']}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if spec["kind"] in ("perlin", "perlin_2d"):
            return np.stack([_perlin_entry(spec, k) for k in range(int(start), int(stop))])
        if spec["kind"] == "cracks":
            return _crack_batch(spec, range(int(start), int(stop)), torch.device("cpu"))
        raise ValueError(f"unknown bank kind {spec['kind']!r}")
    finally:
        torch.set_num_threads(before)


def _pool_piece(job: tuple[dict[str, Any], int, int]) -> np.ndarray:
    return generate_piece(*job)


#: crack work (entries × edge³ voxels) from which CPU banks are built by a process per core: below
#: it, starting the processes (≈ 2 s each, importing torch) costs more than it saves
PARALLEL_CRACK_VOXELS = 2 * 96**3


def _crack_processes(n: int, edge: int, device: torch.device) -> int:
    if device.type != "cpu" or n < 2 or n * edge**3 < PARALLEL_CRACK_VOXELS:
        return 1
    return max(1, min(n, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def generate_bank(
    spec: dict[str, Any], device: torch.device | None = None, *, processes: int | None = 1
) -> np.ndarray:
    """The bank of ``spec`` as float32 (entries, e, e[, e]) host memory (crack blocks on ``device``).

    ``processes``: crack blocks built by that many spawned processes, one block per task on one
    thread; ``None`` chooses one per core for large CPU banks (the driver's choice) and 1 the serial
    path (the default, safe in any calling script). The bytes do not depend on it.
    """
    import torch

    n, e = int(spec["entries"]), int(spec["edge"])
    t0 = time.perf_counter()
    if spec["kind"] in ("perlin", "perlin_2d"):
        out = np.stack([_perlin_entry(spec, k) for k in range(n)])
    elif spec["kind"] == "cracks":
        dev = device or torch.device("cpu")
        procs = _crack_processes(n, e, dev) if processes is None else max(1, min(int(processes), n))
        if procs > 1:
            # one block per task, each on one thread in its own process: a block depends on its own
            # generator only, so the bytes are those of the serial path
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            from concurrent.futures.process import BrokenProcessPool

            try:
                with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
                    jobs = [(spec, a, b) for a, b in bank_pieces(spec, procs)]
                    out = np.concatenate(list(pool.map(_pool_piece, jobs)))
            except BrokenProcessPool:
                # e.g. a __main__ that spawned processes cannot re-import (stdin, no main guard)
                logger.warning("crack bank: process pool failed; building the blocks in this process")
                procs = 1
        if procs <= 1:
            out = np.empty((n, e, e, e), dtype=np.float32)
            batch = max(1, _CRACK_BATCH_VOXELS // e**3)
            for start in range(0, n, batch):
                ks = range(start, min(n, start + batch))
                out[ks.start : ks.stop] = _crack_batch(spec, ks, dev)
    else:
        raise ValueError(f"unknown bank kind {spec['kind']!r}")
    logger.info("bank %s: %d x %s in %.2f s", spec["kind"], n, "x".join([str(e)] * (out.ndim - 1)),
                time.perf_counter() - t0)
    return out


def array_sha256(a: np.ndarray) -> str:
    """sha256 of dtype, shape and C-order bytes of ``a`` (independent of how it is stored)."""
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def generate_banks(
    cfg: ArtifactsConfig, shape: tuple[int, ...], seed: int, device: torch.device | None = None
) -> dict[str, np.ndarray]:
    """Every bank of the recipe as host arrays, keyed by name (see :data:`BANK_NAMES`)."""
    return {name: generate_bank(spec, device) for name, spec in bank_specs(cfg, shape, seed).items()}


_MEMORY: OrderedDict[tuple[str, str], NoiseBanks] = OrderedDict()
_MEMORY_SIZE = 2


def memory_banks(
    cfg: ArtifactsConfig, shape: tuple[int, ...], seed: int, device: torch.device, *,
    processes: int | None = 1,
) -> NoiseBanks:
    """Banks generated in this process on the CPU and moved to ``device``, cached per spec and device.

    For library use of ``render_sample`` without a dataset; a build stores its banks instead (the
    same bytes: both generate on the CPU). ``processes`` as in :func:`generate_bank` (``None``: a
    spawned process per core for big crack banks, for scripts with a ``__main__`` guard).
    """
    import torch

    specs = bank_specs(cfg, shape, seed)
    key = (json.dumps(specs, sort_keys=True), str(device))
    hit = _MEMORY.get(key)
    if hit is not None:
        _MEMORY.move_to_end(key)
        return hit
    host = {name: generate_bank(spec, processes=processes) for name, spec in specs.items()}
    banks = NoiseBanks(
        {k: torch.from_numpy(v).to(device) for k, v in host.items()},
        {k: array_sha256(v) for k, v in host.items()},
    )
    _MEMORY[key] = banks
    while len(_MEMORY) > _MEMORY_SIZE:
        _MEMORY.popitem(last=False)
    return banks
