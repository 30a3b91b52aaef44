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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simaq_factory.device import resolve_device
from simaq_factory.orchestrate.logs import FILE_ONLY, attach_log_file, detach_log_file, quiet_compute_failed
from simaq_factory.phantom.layout import PhantomLayoutError
from simaq_factory.pipeline import NonFiniteData, host_buffers, render_sample
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

#: Errors that the recipe, seed and sample index decide (cells that cannot be laid out or do not fit
#: the volume, values too large for float32): re-running the build fails the same way, so the
#: message asks for a recipe change, and the shard task reports them instead of raising (Dask would
#: retry a raising task ``execution.retries`` times, each attempt rendering the shard again to fail
#: at the same sample).
RECIPE_FAILURES: tuple[type[BaseException], ...] = (PhantomLayoutError, NonFiniteData)

#: Warnings a shard task hands back to the driver at most (the rest are counted; all are in the
#: worker's log file).
MAX_TASK_WARNINGS = 20


class TaskWarnings(logging.Handler):
    """Collects the ``simaq_factory`` warnings one shard task logs (fiducial beads that did not fit,
    a layout that needed another attempt, ...) so that the task returns them and the driver shows
    them on its console: a worker process of a LocalCluster or a remote ``dask worker`` writes its
    records to its own log file only, and a user watching the build would never see them. Records
    of other threads (another task on the same worker) are left out; ``sample`` names the sample
    being rendered."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.sample: int | None = None
        self.messages: list[str] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        if len(self.messages) >= MAX_TASK_WARNINGS:
            self.dropped += 1
            return
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's problem, not the shard's
            return
        self.messages.append(text if self.sample is None else f"sample {self.sample}: {text}")

    def collected(self) -> list[str]:
        more = [f"{self.dropped} more warning(s) in the worker's log file"] if self.dropped else []
        return self.messages + more


def _worker_name() -> Any:
    """This Dask worker's name (an int in a LocalCluster), or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().name
    except (ImportError, ValueError):
        return None


def worker_ordinal() -> int | None:
    """This Dask worker's number: a LocalCluster names its workers 0, 1, …, dask-jobqueue the
    processes of a job ``NAME-<job>-<k>``, ``dask worker --name NAME --nworkers N`` ``NAME-<k>``;
    the trailing number is taken. None for a worker named after its address (``dask worker``
    without ``--name``: the trailing number is its port) or with no number; 0 outside a worker."""
    name = _worker_name()
    if name is None:
        return 0
    if isinstance(name, int):
        return name
    if "://" in str(name):
        return None
    match = re.search(r"(\d+)$", str(name))
    return int(match.group(1)) if match else None


_GPU_CLAIM_LOCK = threading.Lock()
_gpu_claim: tuple[int | None, Any] | None = None  # (GPU index, its lock file held while the process lives)


def _gpu_lock_name(k: int) -> str:
    """The lock file's name for visible GPU ``k``: its UUID where torch reports one (the same
    physical GPU whatever CUDA_VISIBLE_DEVICES each process has), else its index."""
    try:
        uuid = str(torch.cuda.get_device_properties(k).uuid)
    except Exception:  # noqa: BLE001 - no CUDA (tests), an old torch: the index it is
        uuid = f"index{k}"
    return f"simaq-factory-{os.getuid()}-gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', uuid)}.lock"


def _lock_gpu(where: Path, k: int) -> Any | None:
    """The open lock file of visible GPU ``k`` in ``where``, locked (exclusive ``flock``, not
    waiting) for this process's life; None when another process holds it. OSError when no lock
    file can be made."""
    import fcntl

    fh = open(where / _gpu_lock_name(k), "a")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def claim_gpu(count: int, folder: str | None = None) -> int | None:
    """The first of this node's ``count`` visible GPUs that no other worker process of this user
    holds, claimed for this process's life with an exclusive ``flock`` on a file in the temporary
    folder (released by the kernel when the process ends, however it ends). None when all are
    held or no lock file can be made. The same GPU for every call in this process."""
    global _gpu_claim
    import tempfile

    with _GPU_CLAIM_LOCK:
        if _gpu_claim is not None:
            return _gpu_claim[0]
        where = Path(folder or tempfile.gettempdir())
        for k in range(count):
            try:
                fh = _lock_gpu(where, k)
            except OSError as exc:
                why = f"no lock file in {where} ({exc.strerror})"
                break
            if fh is None:
                continue
            _gpu_claim = (k, fh)
            log.info("worker pid %d renders on cuda:%d, the first GPU here no other worker process held",
                     os.getpid(), k)
            return k
        else:
            why = f"all {count} are held by other worker processes"
        _gpu_claim = (None, None)  # asked once: the warning is not repeated for every task
        log.warning("this worker (pid %d) could not claim a GPU of its own (%s): it shares cuda:%d; start "
                    "one worker per GPU, each with its own CUDA_VISIBLE_DEVICES or --name NAME-k",
                    os.getpid(), why, os.getpid() % count)
        return None


def hold_gpu(k: int, folder: str | None = None, *, shared_by_design: bool = False) -> None:
    """Take visible GPU ``k``'s lock (the one :func:`claim_gpu` takes) for this process's life,
    without waiting: a worker that chose its GPU by its number or its ``CUDA_VISIBLE_DEVICES``
    used it unlocked, and a worker claiming a GPU on the same node took the same one while another
    sat idle. When another worker process holds it already, the two share it: a warning
    (``shared_by_design``: a LocalCluster's workers, spread over the GPUs by the driver, which
    warns beyond two per GPU; logged at info). Once per process, like a claim."""
    global _gpu_claim
    import tempfile

    with _GPU_CLAIM_LOCK:
        if _gpu_claim is not None:
            return
        where = Path(folder or tempfile.gettempdir())
        try:
            fh = _lock_gpu(where, k)
        except OSError as exc:  # no lock files here: no worker can claim one either
            log.info("no GPU lock file in %s (%s): cuda:%d is used unlocked", where, exc.strerror, k)
            fh = None
        else:
            if fh is None:
                log.log(logging.INFO if shared_by_design else logging.WARNING,
                        "this worker (pid %d) renders on cuda:%d, which another worker process on this node "
                        "holds: they share it (memory and time); give each worker its own GPU "
                        "(CUDA_VISIBLE_DEVICES, or --name NAME-k for GPU k)", os.getpid(), k)
        _gpu_claim = (k, fh)


def worker_device(device: str) -> torch.device:
    """The device this process renders on, made current. ``cuda`` without an index gives each
    worker its own GPU when several are visible: worker k takes GPU k mod count (without this every
    worker would share GPU 0); a worker whose name carries no number (``dask worker ADDR`` without
    ``--name``) claims the first GPU no other worker process on its node holds (:func:`claim_gpu`).
    Workers that should use one GPU each are better started with their own
    ``CUDA_VISIBLE_DEVICES``, which leaves one visible GPU and makes this choice trivial. A GPU
    chosen by number or by ``CUDA_VISIBLE_DEVICES`` is locked too (:func:`hold_gpu`), so that
    claiming workers pass it by."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            count = max(torch.cuda.device_count(), 1)
            k = worker_ordinal()
            claims = k is None and count > 1
            if claims:
                k = claim_gpu(count)
            dev = torch.device("cuda", (k if k is not None else os.getpid()) % count)
            if not claims:
                hold_gpu(dev.index, shared_by_design=not isinstance(_worker_name(), str))
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


class OutTakenOver(RuntimeError):
    """OUT's writers' lock names another process than the build that submitted the shard task."""


def out_owner(out: Path) -> str | None:
    """The claim that holds OUT's writers' lock, as the lock file's first line names it (the token
    :func:`~simaq_factory.store.outdir.claim_out_dir` writes: pid, host and a random id); None when
    it is empty or cannot be read."""
    from simaq_factory.store.outdir import LOCK

    try:
        lines = (out / LOCK).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return (lines[0].strip() or None) if lines else None


def _check_owner(out: Path, owner: str | None, shard_index: int) -> None:
    """:class:`OutTakenOver` when ``owner`` (the token of the driver's claim of OUT when it submitted
    the task) no longer holds OUT. A task keeps running when its driver lost the scheduler (a
    worker's executing thread cannot be stopped), and it wrote its shard after the driver had
    released OUT and told the user to run the build again: two writers on one shard file. Checked
    before a task writes anything and again before its provenance record commits the shard.

    The whole token is compared, not the pid: a new build with the old one's pid (a container's
    entry process, another node) passed. A lock file that is empty or unreadable shows no owner,
    and the task refuses too (was: let through): while its driver holds OUT the file holds the
    driver's token, so the task cannot tell that it still does."""
    from simaq_factory.store.outdir import LOCK, describe_owner

    if owner is None:
        return
    now = out_owner(out)
    if now is None:
        raise OutTakenOver(f"shard {shard_index}: {out / LOCK} is empty or unreadable, so nothing shows that "
                           f"the build ({describe_owner(owner)}) that submitted this task still holds {out} "
                           "(another process may be taking it over); nothing written")
    if now != owner:
        same = describe_owner(now) == describe_owner(owner)  # one pid and host: tell the claims apart
        raise OutTakenOver(f"shard {shard_index}: {out} is now held by another process "
                           f"({describe_owner(now, claim=same)}), not by the build "
                           f"({describe_owner(owner, claim=same)}) that submitted this task and has since "
                           "ended; nothing written")


def run_shard(
    out: str, recipe_json: dict[str, Any], shard_index: int, device: str, threads: int,
    expect_software: dict[str, Any] | None = None, owner: str | None = None,
) -> dict[str, Any]:
    """Render shard ``shard_index`` of the dataset at ``out``; return a small summary: the shard,
    seconds, device and ``warnings`` (what the task logged at WARNING, see :class:`TaskWarnings`).
    A failure the recipe decides (:data:`RECIPE_FAILURES`) is returned as ``failed`` (the error in
    one line) with ``recipe_failure`` true, not raised, so that Dask does not retry it; any other
    error is raised (and retried).

    ``expect_software``: the driver's versions; a worker whose rendering software differs refuses
    the task before writing anything (:class:`OtherSoftware`). ``owner``: the token of the
    driver's claim in OUT's lock file (:func:`out_owner`); once another process holds OUT (the driver is gone and a
    new build or a freeze took it), the task writes nothing (:class:`OutTakenOver`).

    The worker's log file in ``out`` receives this task's records only: it is detached when the
    task ends, so a long-lived worker that later serves another dataset never writes into this one
    (a frozen dataset would change under its checksums)."""
    if (why := software_mismatch(expect_software)) is not None:
        raise OtherSoftware(f"worker {socket.gethostname()} (pid {os.getpid()}) runs other software than the "
                            f"driver: {why}; start the workers with the driver's software (the same "
                            "simaq-factory checkout or version, torch, numpy and perlin-numpy)")
    _check_owner(Path(out), owner, shard_index)
    log_path = attach_log_file(Path(out), "worker")
    # the failure is this one line and its traceback in the log file (the driver reports it on the
    # console once), not distributed's multi-line "Compute Failed" block on stderr per attempt
    quiet_compute_failed()
    log.info("shard %d started (pid %d)", shard_index, os.getpid())
    warnings = TaskWarnings()
    logging.getLogger("simaq_factory").addHandler(warnings)
    try:
        with host_buffers():  # the process's page-locked buffers, not a set per pool thread
            summary = _run_shard(out, recipe_json, shard_index, device, threads, owner, warnings=warnings)
    except RECIPE_FAILURES as err:
        # reported, not raised: a retry would render the shard again to fail at the same sample
        log.exception("shard %d failed (the recipe decides it: not retried)", shard_index, extra=FILE_ONLY)
        return {"shard": shard_index, "failed": f"{type(err).__name__}: {err}", "recipe_failure": True,
                "warnings": warnings.collected()}
    except Exception:
        log.exception("shard %d failed", shard_index, extra=FILE_ONLY)
        raise
    finally:
        logging.getLogger("simaq_factory").removeHandler(warnings)
        detach_log_file(log_path)
    summary["warnings"] = warnings.collected()
    return summary


def _run_shard(
    out: str, recipe_json: dict[str, Any], shard_index: int, device: str, threads: int, owner: str | None = None,
    warnings: TaskWarnings | None = None,
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
        if warnings is not None:
            warnings.sample = index
        arrays, record = render_sample(recipe, index, dev, banks=banks, host_views=True)  # copied next
        for name in specs:
            a = arrays[name]
            buffers[name][(j, *(slice(0, s) for s in a.shape))] = a
        records.append(record)
    if warnings is not None:
        warnings.sample = None
    t_write = time.perf_counter()
    outp = Path(out)
    _check_owner(outp, owner, shard_index)  # rendering takes minutes: the driver may have gone meanwhile
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
    _check_owner(outp, owner, shard_index)  # no record for a shard another build now owns
    write_json_atomic(provenance_path(outp, shard_index), provenance)
    log.info("shard %d (samples %d-%d) done in %.2f s", shard_index, samples.start,
             samples.stop - 1, time.perf_counter() - t0)
    return {"shard": shard_index, "seconds": time.perf_counter() - t0, "device": str(dev)}
