"""The unit of work: render and write one whole shard. Runs inside a Dask worker (or inline).

The task is idempotent: it rewrites every array's shard in full, then the provenance record by
atomic rename. It renders with the dataset's stored noise banks (built by the driver beforehand). A
task killed at any point leaves no provenance record (or the previous one, whose checksums no
longer match), so the driver redoes the shard on resume.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simaq_factory.device import resolve_device
from simaq_factory.orchestrate.logs import attach_log_file, detach_log_file
from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import recipe_id, resolve
from simaq_factory.store.banks import load_banks
from simaq_factory.store.dataset import (
    RECORD_DIGEST,
    record_digest,
    shard_checksums,
    shard_file,
    write_json_atomic,
    write_shard,
)
from simaq_factory.store.layout import array_specs, provenance_path, shard_range
from simaq_factory.tomo.projector import resolved_backend
from simaq_factory.versions import cpu_kernels, software_mismatch, software_versions

log = logging.getLogger(__name__)


def worker_ordinal() -> int:
    """This Dask worker's number: a LocalCluster names its workers 0, 1, …, and dask-jobqueue the
    processes of a job ``NAME-<job>-<k>``; the trailing number is taken. 0 outside a worker."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return 0
    if isinstance(name, int):
        return name
    match = re.search(r"(\d+)$", str(name))
    return int(match.group(1)) if match else 0


def worker_device(device: str) -> torch.device:
    """The device this process renders on, made current. ``cuda`` without an index gives each
    worker its own GPU when several are visible: worker k takes GPU k mod count (without this every
    worker would share GPU 0). Workers that should use one GPU each are better started with their
    own ``CUDA_VISIBLE_DEVICES``, which leaves one visible GPU and makes this choice trivial."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", worker_ordinal() % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    return dev


def warm_up(device: str) -> None:
    """Nothing but load: unpickling this function imports this module (torch, the pipeline), and the
    device is initialised (a CUDA context costs seconds)."""
    dev = worker_device(device)
    if dev.type == "cuda":
        torch.zeros(1, device=dev)


def _worker_threads() -> int:
    """Torch threads for a task on a worker the driver does not know (``--scheduler``): this machine's
    cores over the tasks the Dask worker runs at once (its ``nthreads``); the driver's own core count
    says nothing about the worker's machine. 0 (torch's default) outside a Dask worker."""
    from simaq_factory.orchestrate.cluster import default_threads

    try:
        from distributed import get_worker

        return default_threads(int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 0


class OtherSoftware(RuntimeError):
    """A worker runs other rendering software than the driver (versions.RENDER_SOFTWARE)."""


def run_shard(
    out: str, recipe_json: dict[str, Any], shard_index: int, device: str, threads: int,
    expect_software: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render shard ``shard_index`` of the dataset at ``out``; return a small summary.

    ``expect_software``: the driver's versions; a worker whose rendering software differs refuses
    the task before writing anything (:class:`OtherSoftware`).

    The worker's log file in ``out`` receives this task's records only: it is detached when the
    task ends, so a long-lived worker that later serves another dataset never writes into this one
    (a frozen dataset would change under its checksums)."""
    if (why := software_mismatch(expect_software)) is not None:
        raise OtherSoftware(f"worker {socket.gethostname()} (pid {os.getpid()}) runs other software than the "
                            f"driver: {why}; start the workers with the driver's software (the same "
                            "simaq-factory checkout or version, torch, numpy and perlin-numpy)")
    log_path = attach_log_file(Path(out), "worker")
    try:
        return _run_shard(out, recipe_json, shard_index, device, threads)
    finally:
        detach_log_file(log_path)


def _run_shard(
    out: str, recipe_json: dict[str, Any], shard_index: int, device: str, threads: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    threads = threads if threads > 0 else _worker_threads()
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    recipe = resolve(recipe_json)
    rid = recipe_id(recipe)
    dev = worker_device(device)
    banks = load_banks(Path(out), dev)  # read and hash-checked once per process, then cached
    from simaq_factory.acquisition.angles import a_max_for

    specs = array_specs(recipe, a_max_for(recipe))
    samples = shard_range(recipe.dataset.n_samples, recipe.dataset.samples_per_shard, shard_index)
    buffers = {
        name: np.full((len(samples),) + spec.shape[1:], spec.fill_value, dtype=spec.dtype)
        for name, spec in specs.items()
    }
    records = []
    for j, index in enumerate(samples):
        arrays, record = render_sample(recipe, index, dev, banks=banks, host_views=True)  # copied next
        for name in specs:
            a = arrays[name]
            buffers[name][(j, *(slice(0, s) for s in a.shape))] = a
        records.append(record)
    t_write = time.perf_counter()
    outp = Path(out)
    # the task owns the whole shard: start from no file, since zarr updates an existing shard in
    # place and fails on one that a crash or a disk left truncated (its index sits at the end)
    for spec in specs.values():
        shard_file(outp, spec, shard_index).unlink(missing_ok=True)
    write_shard(outp, specs, samples.start, buffers)
    write_s = time.perf_counter() - t_write
    checksums = shard_checksums(outp, specs, shard_index)
    provenance = {
        "schema_version": 1,
        "recipe_id": rid,
        "shard": shard_index,
        "samples": [samples.start, samples.stop],
        "checksums": checksums,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_kernels": cpu_kernels(),
        "projector": resolved_backend(recipe.execution.projector, dev),
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": software_versions(),
        "timings_s": {"write": round(write_s, 4), "total": round(time.perf_counter() - t0, 4)},
        "sample_records": records,
    }
    provenance[RECORD_DIGEST] = record_digest(provenance)
    write_json_atomic(provenance_path(outp, shard_index), provenance)
    log.info("shard %d (samples %d-%d) done in %.2f s", shard_index, samples.start,
             samples.stop - 1, time.perf_counter() - t0)
    return {"shard": shard_index, "seconds": time.perf_counter() - t0, "device": str(dev)}
