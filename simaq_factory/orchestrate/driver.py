"""``build``: plan shards, start or resume the output directory, run shard tasks on Dask.

The driver is the only writer of dataset metadata. It builds (or checks) the dataset's noise banks,
then submits one task per pending shard through a bounded window (tasks with resource restrictions
are not queued by the scheduler, so a window keeps late-joining workers fed), retries failed tasks,
and reports progress through a callback.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simaq_factory.device import resolve_device
from simaq_factory.seeding import check_first_layout
from simaq_factory.errors import BadInput, BuildFailed
from simaq_factory.orchestrate.cluster import (
    ClusterHandle,
    check_slurm,
    default_threads,
    open_cluster,
    slurm_processes,
)
from simaq_factory.orchestrate.logs import attach_log_file, detach_log_file
from simaq_factory.orchestrate.task import RECIPE_FAILURES, run_shard, warm_up
from simaq_factory.acquisition.angles import a_max_for
from simaq_factory.recipe.io import recipe_id, recipe_to_json
from simaq_factory.recipe.model import Recipe
from simaq_factory.store.banks import ensure_banks
from simaq_factory.store.dataset import read_card, shard_states, update_card
from simaq_factory.store.inspect import check_sealed_intact
from simaq_factory.store.layout import array_specs, dataset_card, provenance_path, shard_ranges
from simaq_factory.store.outdir import (
    check_out_dir,
    claim_out_dir,
    is_sealed,
    new_owner_token,
    repair_array_metadata,
    repair_card,
    repair_recipe_files,
    sweep_temp_files,
    start_out_dir,
)
from simaq_factory.tomo.projector import check_backend
from simaq_factory.versions import software_versions

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict[str, Any] | None], None]


@dataclass
class BuildReport:
    out: Path
    recipe_id: str
    n_shards: int
    skipped: int
    built: int
    failed: dict[int, str] = field(default_factory=dict)
    #: failed shards whose error the recipe decides (see :data:`RECIPE_FAILURES`): a re-run fails again
    recipe_failed: set[int] = field(default_factory=set)
    seconds: float = 0.0
    cluster: str = ""
    dashboard: str | None = None
    frozen: bool = False  # a sealed dataset of this recipe: nothing was done
    device: str = ""  # as resolved here ("auto" on a scheduler: each worker resolves it)


def _record_failure(report: BuildReport, shard: int, err: BaseException) -> None:
    report.failed[shard] = f"{type(err).__name__}: {err}"
    if isinstance(err, RECIPE_FAILURES):
        report.recipe_failed.add(shard)


def _task_outcome(report: BuildReport, shard: int, summary: dict[str, Any], *, relay: bool) -> bool:
    """Book a shard task's returned summary: False (and the failure recorded) when it reports a
    failure the recipe decides (:data:`~simaq_factory.orchestrate.task.RECIPE_FAILURES`, returned
    rather than raised so that it is not retried). ``relay``: log the task's warnings here, for a
    task that ran in a worker process, whose records reach only its own log file (an inline task's
    reached this console as they were logged)."""
    if relay:
        for message in summary.get("warnings") or ():
            log.warning("shard %d, %s", shard, message)
    failed = summary.get("failed")
    if failed is None:
        return True
    report.failed[shard] = str(failed)
    if summary.get("recipe_failure"):
        report.recipe_failed.add(shard)
    return False


def pending_shards(out: Path, recipe: Recipe, rid: str,
                   say: Callable[[str], None] | None = None) -> tuple[list[int], int]:
    """Shards to (re)build and how many are already done (``say``: a line before the check, which
    reads every written shard file)."""
    specs = array_specs(recipe, a_max_for(recipe))
    n_shards = len(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard))
    if say is not None:
        say(f"resuming: checking the {n_shards} shard(s)' files against their recorded checksums ...")
    todo = []
    for s, (state, reason) in enumerate(shard_states(out, specs, range(n_shards), rid)):
        if state != "done":
            if state == "damaged":
                log.warning("shard %d will be rebuilt: %s", s, reason)
            todo.append(s)
    if todo and len(todo) < n_shards:
        pending = set(todo)
        _warn_other_software(out, [s for s in range(n_shards) if s not in pending])
    return todo, n_shards - len(todo)


def _warn_other_software(out: Path, done: list[int]) -> None:
    """A resume whose software differs from that of the shards already done (the checkout moved,
    torch was upgraded) would mix renderings in one dataset: said, with the remedies."""
    from simaq_factory.store.dataset import load_provenance
    from simaq_factory.versions import describe_software, render_differences

    here = software_versions()
    others: dict[str, list[int]] = {}
    for s in done:
        record, _ = load_provenance(out, s)
        versions = (record or {}).get("versions") or {}
        if render_differences(versions, here):
            others.setdefault(describe_software(versions), []).append(s)
    for what, shards in others.items():
        log.warning("%d shard(s) done were rendered by %s (first: shard %d), the rest will be by %s: the dataset "
                    "mixes renderings; `simaq-factory verify OUT --regen K` compares them, or build into a new OUT",
                    len(shards), what, shards[0], describe_software(here))


def _check_local_memory(workers: int, memory_limit: str) -> None:
    """``memory_limit: auto`` gives each LocalCluster worker the machine's memory / workers: refused
    (exit 2) when that is less than a worker needs (many workers on a small machine paused at
    start-up and the build waited)."""
    if memory_limit != "auto":
        return  # checked with the recipe
    from distributed.system import MEMORY_LIMIT  # what LocalCluster divides (cgroup limits included)

    from simaq_factory.recipe.model import MIN_WORKER_MEMORY

    each = MEMORY_LIMIT // max(1, workers)
    if each < MIN_WORKER_MEMORY:
        raise BadInput("--workers", f"{workers} LocalCluster workers share {MEMORY_LIMIT / 2**30:.1f} GiB: "
                       f"{each // 2**20} MiB each, less than a worker needs ({MIN_WORKER_MEMORY // 2**20} MiB); "
                       "use fewer workers")


def _mark_building(out: Path, todo: list[int]) -> None:
    """A resumed build with shards to do is "building" again until it finishes, so a resume killed
    midway never leaves a card that says "complete" over missing shards."""
    if todo and read_card(out).get("status") != "building":
        update_card(out, {"status": "building"})


def build(
    recipe: Recipe,
    out: Path,
    *,
    recipe_text: str,
    scheduler: str | None = None,
    cluster: str = "local",
    progress: ProgressFn | None = None,
    on_cluster: Callable[[str, str | None], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build (or resume) the dataset of ``recipe`` at ``out``. Raises BadInput / BuildFailed.

    A relative ``out`` is made absolute here (not resolved: a shared filesystem's path as the user
    wrote it, symlinks kept): workers of ``--scheduler`` or SLURM run in other directories, and
    looked for a relative OUT in theirs."""
    t0 = time.perf_counter()
    out = Path(os.path.abspath(out))
    rid = recipe_id(recipe)
    exe = recipe.execution
    device = exe.device
    if scheduler is None and cluster != "slurm":
        device = str(resolve_device(exe.device))  # fail fast (exit 2) when CUDA is absent here
        try:
            check_backend(exe.projector, device)
        except ValueError as exc:
            raise BadInput("execution.projector", str(exc)) from None
    if is_sealed(out, rid):  # re-running a finished pipeline: nothing to write, nothing refused
        n = len(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard))
        if on_phase is not None:
            on_phase(f"frozen: checking the {n} shard(s)' files against their recorded checksums")
        check_sealed_intact(out)  # but a damaged one is not called complete
        return BuildReport(out, rid, n, skipped=n, built=0, cluster="none", frozen=True)
    check_out_dir(out, rid)  # before anything is written or started
    check_first_layout(recipe)  # cells that cannot be laid out: exit 2 with nothing written
    if scheduler is None and cluster == "local":
        _check_local_memory(exe.workers, exe.memory_limit)
    if scheduler is None and cluster == "slurm":
        check_slurm()  # sbatch and dask-jobqueue, imported here: on the main thread (load_jobqueue)
    a_max = a_max_for(recipe)
    specs = array_specs(recipe, a_max)
    n_shards = len(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard))
    recipe_json = recipe_to_json(recipe)

    token = new_owner_token()  # this build's entry in OUT's lock file, which its shard tasks compare
    with ExitStack() as held:

        def claim() -> bool:
            """Lock OUT for this build (exit 2 while another process holds it), check it again under
            the lock and, on resume, rewrite a damaged card or array metadata; True when resuming."""
            resuming = held.enter_context(claim_out_dir(out, rid, token=token))
            if resuming:
                sweep_temp_files(out)
                repair_recipe_files(out, rid, recipe_json, recipe_text)
                repair_card(out, dataset_card(recipe, rid, a_max))
                repair_array_metadata(out, specs)
            return resuming

        # inline and LocalCluster builds claim OUT now; a scheduler or SLURM cluster is waited for
        # first, so that an unreachable one leaves nothing written
        resuming = claim() if cluster == "inline" or (scheduler is None and cluster == "local") else None

        if cluster == "inline":
            if not resuming:
                start_out_dir(out, recipe_text=recipe_text, resolved=recipe_json, rid=rid, specs=specs,
                              card=dataset_card(recipe, rid, a_max))
            log_path = attach_log_file(out, "driver")
            _prepare_banks(out, recipe, log_path, keep=True, say=on_phase)
            todo, done = pending_shards(out, recipe, rid, say=on_phase if resuming else None)
            _mark_building(out, todo)
            log.info("build %s: %d shard(s) to do, %d done (inline)", rid[:12], len(todo), done)
            report = BuildReport(out, rid, n_shards, done, 0, cluster="inline (this process)", device=device)
            threads = exe.threads_per_worker or default_threads(1)
            for i, s in enumerate(todo):
                try:
                    summary = run_shard(str(out), recipe_json, s, device, threads)
                except Exception as err:  # noqa: BLE001 - reported per shard, exit code 1
                    _record_failure(report, s, err)
                    log.error("shard %d failed: %s", s, report.failed[s])
                    log.info("shard %d: the traceback", s, exc_info=err)  # OUT/logs, and the console at -v
                    summary = None
                else:
                    if _task_outcome(report, s, summary, relay=False):
                        report.built += 1
                    else:
                        log.error("shard %d failed: %s", s, report.failed[s])
                        summary = None
                if progress:
                    progress(i + 1, len(todo), summary)
            try:
                return _finish(out, report, t0)
            finally:
                detach_log_file(log_path)
        gpu = device.startswith("cuda") or (cluster == "slurm" and exe.slurm.gpus_per_job > 0)
        local = scheduler is None and cluster == "local"
        # a resumed LocalCluster build with every shard done starts no cluster: it checks the banks
        # and finishes (re-running a finished build took ~10 s of worker start-up for nothing)
        early = pending_shards(out, recipe, rid, say=on_phase) if local and resuming else None
        if early is not None and not early[0]:
            log_path = attach_log_file(out, "driver")
            try:
                _prepare_banks(out, recipe, log_path, say=on_phase)
                log.info("build %s: all %d shard(s) done; no cluster started", rid[:12], early[1])
                return _finish(out, BuildReport(out, rid, n_shards, early[1], 0, cluster="none (nothing to do)",
                                                device=device), t0)
            finally:
                detach_log_file(log_path)
        if local and gpu:
            import torch

            shared = _gpu_sharing(exe.workers, torch.cuda.device_count())
            if shared:
                log.warning(shared)

        def ready(handle: ClusterHandle) -> None:
            if on_cluster:
                on_cluster(handle.description, handle.dashboard)
            if local:
                _warm_up(handle.client, device)

        # a LocalCluster starts (≈ 4 s: worker processes spawn and import) while the driver writes the
        # output's skeleton and relaxes the crack blocks; a scheduler or SLURM cluster is waited for
        # first, so an unreachable one leaves nothing written
        starting = _StartingCluster(
            lambda: open_cluster(scheduler=scheduler, workers=exe.workers, gpu=gpu and scheduler is None,
                                 memory_limit=exe.memory_limit, execution=exe, kind=cluster),
            ready,
        )
        log_path = None
        try:
            if not local:
                handle = starting.handle()
                if scheduler is not None:
                    workers = handle.client.scheduler_info().get("workers", {})
                    if device == "auto":
                        gpu = _all_workers_have_gpus(workers)
                        log.info("--device auto on %d worker(s): shard tasks %s a GPU resource", len(workers),
                                 "request" if gpu else "do not request (not every worker has one)")
                    elif gpu:
                        _check_gpu_workers(workers)
            if resuming is None:
                resuming = claim()
            if not resuming:
                start_out_dir(out, recipe_text=recipe_text, resolved=recipe_json, rid=rid, specs=specs,
                              card=dataset_card(recipe, rid, a_max))
            log_path = attach_log_file(out, "driver")
            # on a scheduler or SLURM, whose driver may be a login node, the workers build the banks; on
            # one machine the driver relaxes the crack blocks (one thread, or a process per core for big
            # banks) while the workers load their modules and make the Perlin banks
            _prepare_banks(out, recipe, log_path, _worker_pieces(starting, exe.retries, rid), say=on_phase,
                           parallel=max(1, exe.workers if local else starting.handle().n_workers),
                           cracks_here=local)
            handle = starting.handle()
            todo, done = early if early is not None else pending_shards(
                out, recipe, rid, say=on_phase if resuming else None)
            _mark_building(out, todo)
            log.info("build %s: %d shard(s) to do, %d done; %s; dashboard %s", rid[:12], len(todo), done,
                     handle.description, handle.dashboard)
            report = BuildReport(out, rid, n_shards, done, 0, cluster=handle.description, device=device,
                                 dashboard=handle.dashboard)
            # this process holds OUT: claim_out_dir wrote ``token`` into the lock file (not read back here:
            # where flock is emulated by POSIX locks, NFS, closing any descriptor of it drops the lock)
            _run_distributed(handle, todo, report, out, recipe_json, device, recipe, gpu, progress,
                             owner=token)
        except BaseException:
            if log_path is not None:
                detach_log_file(log_path)
            starting.close(*sys.exc_info())
            raise
        starting.close(None, None, None)
        try:
            return _finish(out, report, t0)
        finally:
            detach_log_file(log_path)


class _StartingCluster:
    """A cluster context (:func:`open_cluster`) entered on a background thread.

    ``handle()`` waits for it (re-raising its start-up error); ``close`` waits for the start-up to
    end and exits the context, so a cluster is closed even when the driver fails before using it.
    ``on_ready`` runs on the thread once the cluster is up (messages, warming the workers).
    """

    def __init__(self, make: Callable[[], Any], on_ready: Callable[[ClusterHandle], None]) -> None:
        self._context = make()
        self._handle: ClusterHandle | None = None
        self._error: BaseException | None = None
        self._on_ready = on_ready
        self._thread = threading.Thread(target=self._enter, name="cluster-start", daemon=True)
        self._thread.start()

    def _enter(self) -> None:
        try:
            self._handle = self._context.__enter__()
            self._on_ready(self._handle)
        except BaseException as err:  # noqa: BLE001 - re-raised by handle() in the driver's thread
            self._error = err

    def handle(self) -> ClusterHandle:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._handle is not None
        return self._handle

    def close(self, *exc_info: Any) -> None:
        self._thread.join()
        if self._handle is not None:
            self._context.__exit__(*exc_info)


def _check_gpu_workers(workers: dict[str, Any]) -> None:
    """CUDA shard tasks ask for a ``GPU`` resource, and a task nobody offers waits forever: refuse
    a scheduler whose workers (if any joined yet) advertise none."""
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise BadInput("--scheduler", f"the device is CUDA, so each shard task needs a worker with a GPU "
                       f"resource, and none of its {len(workers)} worker(s) has one: start them as "
                       "`CUDA_VISIBLE_DEVICES=k dask worker ADDR --resources GPU=1 --nthreads 1`, one per GPU k")


def _all_workers_have_gpus(workers: dict[str, Any]) -> bool:
    """``--device auto`` on a scheduler: when every worker advertises a ``GPU`` resource the shard
    tasks request one, so a worker runs one shard per GPU at a time whatever its thread count; on
    a mixed or CPU cluster they request none and each worker resolves ``auto`` itself."""
    return bool(workers) and all(w.get("resources", {}).get("GPU") for w in workers.values())


def _gpu_sharing(workers: int, n_gpus: int) -> str | None:
    """A LocalCluster's worker k renders on GPU k mod count, so more than two workers per GPU
    stack that many samples' memory on each (two overlap one's host work with the other's GPU
    work); the warning says so, or None."""
    if n_gpus < 1 or workers <= 2 * n_gpus:
        return None
    return (f"{workers} workers share {n_gpus} GPU(s): up to {-(-workers // n_gpus)} samples at once on a "
            "GPU, each with its own GPU memory; with large volumes use execution.workers <= 2 per GPU")


#: Seconds between the driver's checks of its cluster while it waits for tasks.
HEALTH_EVERY_S = 20.0
#: Seconds between two warnings that no worker can run tasks.
IDLE_WARN_EVERY_S = 60.0


def _without_traceback(record: logging.LogRecord) -> bool:
    """Dask's client logs a lost scheduler with the tracebacks of its reconnection attempts: the
    message line is what a user needs (the build says what it means for the dataset). A record
    whose message is empty (its traceback was all it said) is dropped: it printed an empty
    ``ERROR distributed.client:`` line before the build's own."""
    record.exc_info, record.exc_text = None, None
    return bool(record.getMessage().strip())


class _ClusterWatch:
    """The driver's view of its cluster while it waits: a lost scheduler ends the build at once
    (its futures would never complete: the build hung until killed); a cluster with no worker that
    can run tasks (none connected, or all paused by their memory limit; a worker that cannot load
    the tasks' code leaves) is named in a warning every minute, since workers may still join."""

    def __init__(self, client: Any, what: str, *, writes: bool = False) -> None:
        self.client, self.what, self.writes = client, what, writes
        self.address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
        self.idle_since: float | None = None
        self.warned = 0.0
        client_log = logging.getLogger("distributed.client")
        if not logging.getLogger().isEnabledFor(logging.DEBUG) and _without_traceback not in client_log.filters:
            client_log.addFilter(_without_traceback)  # -vv keeps the tracebacks

    def check(self, err: BaseException | None = None) -> None:
        """BuildFailed when the scheduler is lost (the client closed, or ``err``, a task's error,
        says its future was cancelled with the connection). No round trip to the scheduler."""
        lost = err is not None and "scheduler-connection-lost" in str(err)
        if lost or self.client.status in ("closing", "closed", "failed"):
            orphans = ("; the workers may still finish the shards they were rendering, and write nothing once "
                       "the new build holds the output" if self.writes else "")
            raise BuildFailed(f"lost the connection to the Dask scheduler {self.address} while {self.what}; "
                              f"the shards written so far are kept: run the same command again to resume{orphans}")

    def check_idle(self) -> None:
        """A warning, at most every :data:`IDLE_WARN_EVERY_S`, when no worker has been able to run
        tasks for :data:`HEALTH_EVERY_S` (asks the scheduler: called while nothing completes)."""
        try:
            workers = self.client.scheduler_info().get("workers", {})
        except Exception:  # noqa: BLE001 - a hint; the next check (or the futures) tells more
            return
        states = collections.Counter(str(w.get("status", "running")) for w in workers.values())
        now = time.monotonic()
        if states.get("running", 0):
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = now
        if now - self.idle_since >= HEALTH_EVERY_S and now - self.warned >= IDLE_WARN_EVERY_S:
            self.warned = now
            seen = ", ".join(f"{n} {st}" for st, n in sorted(states.items())) or "none connected"
            log.warning("%s: no worker of %s can run tasks for %.0f s (workers: %s); a worker that is paused "
                        "has reached its memory limit, one that cannot import simaq_factory leaves at its "
                        "first task (see its log)", self.what, self.address, now - self.idle_since, seen)

    def wait(self, futures: list[Any], *, all_done: bool = False) -> list[Any]:
        """The futures that are done (at least one; every one with ``all_done``), checking the
        cluster every :data:`HEALTH_EVERY_S` while they are not."""
        from distributed import wait

        while True:
            try:
                done, _ = wait(futures, timeout=HEALTH_EVERY_S,
                               return_when="ALL_COMPLETED" if all_done else "FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            except Exception:  # noqa: BLE001 - futures cancelled (the scheduler's connection lost): checked next
                done = {f for f in futures if f.done()}
            self.check()
            if done:
                self.idle_since = None  # something ran
                if not all_done or len(done) == len(futures):
                    return list(done)
            self.check_idle()


def _warm_up(client: Any, device: str) -> None:
    """Have each worker load the shard task's modules (and its CUDA context) now, while the driver
    makes the banks, instead of before its first shard. Fire and forget: a failure shows there."""
    from distributed import fire_and_forget

    for address in client.scheduler_info().get("workers", {}):
        fire_and_forget(client.submit(warm_up, device, workers=[address], allow_other_workers=False,
                                      pure=False, priority=10**12))


def _worker_pieces(
    starting: _StartingCluster, retries: int, rid: str
) -> Callable[[list[Any]], Callable[[], list[Any]]]:
    """Generate bank pieces as tasks on the cluster's workers (on their CPUs, one thread each).

    The largest pieces (crack blocks) get the highest priority so they start first. A piece is a
    pure function of its spec and entry range, so its bytes do not depend on the worker. The call
    returns at once (a thread waits for the cluster, submits and gathers); the returned function
    waits for the pieces.
    """

    def gather(jobs: list[Any]) -> list[Any]:
        from simaq_factory.artifacts.banks import bank_shape, generate_piece

        client = starting.handle().client
        futures = []
        try:
            for spec, a, b in jobs:
                voxels = (b - a) * math.prod(bank_shape(spec)[1:])
                cost = voxels * (100 if spec["kind"] == "cracks" else 1)
                futures.append(client.submit(
                    generate_piece, spec, a, b, key=f"bank-{spec['bank_index']}-{a}-{b}-{rid[:12]}",
                    priority=cost, retries=retries, pure=False,
                ))
            watch = _ClusterWatch(client, "making the noise banks")
            watch.wait(futures, all_done=True)
            try:
                return list(client.gather(futures))
            except Exception as err:  # cancelled with the scheduler's connection: that, in one line
                watch.check(err)
                raise
        finally:
            for f in futures:
                f.release()

    def run(jobs: list[Any]) -> Callable[[], list[Any]]:
        pool = ThreadPoolExecutor(1, thread_name_prefix="bank-pieces")
        pending = pool.submit(gather, jobs)
        pool.shutdown(wait=False)
        return pending.result

    return run


def _prepare_banks(
    out: Path,
    recipe: Recipe,
    log_path: Any,
    run_pieces: Callable[[list[Any]], Callable[[], list[Any]]] | None = None,
    *,
    parallel: int = 1,
    keep: bool = False,
    cracks_here: bool = False,
    say: Callable[[str], None] | None = None,
) -> None:
    """Build or check the noise banks before any shard task exists (store/banks.py).

    Banks are generated on CPUs (here, or by ``run_pieces`` on the cluster's workers), so their
    bytes do not depend on where shards run.
    """
    t = time.perf_counter()
    if say:
        say("noise banks: generating or checking (Perlin volumes, ice-crack blocks, flicker) ...")
    try:
        record = ensure_banks(out, recipe, run_pieces=run_pieces, parallel=parallel, keep=keep,
                              cracks_here=cracks_here)
    except BaseException:
        detach_log_file(log_path)
        raise
    log.info("noise banks ready in %.2f s: %s", time.perf_counter() - t,
             ", ".join(f"{k} {v['shape']} {v['sha256'][:12]}" for k, v in record.items()))
    if say:
        say(f"noise banks: ready in {time.perf_counter() - t:.1f} s")


def _run_distributed(
    handle: Any,
    todo: list[int],
    report: BuildReport,
    out: Path,
    recipe_json: dict[str, Any],
    device: str,
    recipe: Recipe,
    gpu: bool,
    progress: ProgressFn | None,
    *,
    owner: str | None = None,
) -> None:
    """Render the shards ``todo`` on the cluster. ``owner``: the token of this driver's claim in OUT's lock
    file (:func:`~simaq_factory.store.outdir.new_owner_token`);
    a task that outlives the driver (a lost scheduler) writes nothing once another process holds OUT."""
    exe = recipe.execution
    client = handle.client
    n_workers = max(1, handle.n_workers)
    if handle.description.startswith("SLURM"):
        threads = exe.threads_per_worker or max(1, exe.slurm.cores // slurm_processes(exe, gpu=gpu))
    elif handle.description.startswith("LocalCluster"):
        threads = exe.threads_per_worker or default_threads(n_workers)
    else:  # a scheduler's workers run elsewhere: each task sizes its pool on its own machine
        threads = exe.threads_per_worker
    queue = collections.deque(todo)  # popped from the left once per finished shard
    resources = {"GPU": 1} if gpu else None
    # the key names the output too: two builds of one recipe into two folders on one scheduler
    # shared each shard's task, and one folder got no shard while its build said it wrote them all
    where = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    if handle.n_workers == 0:
        log.warning("the scheduler has no workers yet: the build waits for the first to join")

    def window() -> int:
        """Tasks in flight: execution.window, or 2 per worker connected now (late joiners widen it)."""
        if exe.window:
            return int(exe.window)
        try:
            return 2 * max(1, len(client.scheduler_info().get("workers", {})), n_workers)
        except Exception:  # noqa: BLE001 - the count is a hint
            return 2 * n_workers

    expected = software_versions()  # a worker running other software refuses the task

    def submit(s: int) -> Any:
        return client.submit(
            run_shard, str(out), recipe_json, s, device, threads, expected, owner,
            key=f"shard-{s:06d}-{report.recipe_id[:12]}-{where}", retries=exe.retries, pure=False,
            resources=resources,
        )

    futures: dict[Any, int] = {}
    watch = _ClusterWatch(client, "rendering shards", writes=True)

    def refill() -> None:
        watch.check()  # never submit through a client that lost its scheduler: nothing would come back
        limit = window()  # asked once per refill, not once per task submitted
        while queue and len(futures) < limit:
            s = queue.popleft()
            futures[submit(s)] = s

    refill()
    finished = 0
    while futures:
        fut = watch.wait(list(futures))[0]
        s = futures.pop(fut)
        summary = None
        try:
            summary = fut.result()
            if not _task_outcome(report, s, summary, relay=True):
                log.error("shard %d failed (not retried: the recipe decides it): %s", s, report.failed[s])
                summary = None
            elif not provenance_path(out, s).is_file():  # the task's success is its record in OUT
                raise BuildFailed(f"its task reported success but {provenance_path(out, s)} was not written")
            else:
                report.built += 1
        except Exception as err:  # noqa: BLE001 - reported per shard, exit code 1
            watch.check(err)  # cancelled with the scheduler's connection: that is the whole build's failure
            _record_failure(report, s, err)
            log.error("shard %d failed after retries: %s", s, report.failed[s])
            log.info("shard %d: the traceback", s, exc_info=err)  # OUT/logs, and the console at -v
        finally:
            fut.release()
        finished += 1
        if progress:
            progress(finished, len(todo), summary)
        refill()


def _finish(out: Path, report: BuildReport, t0: float) -> BuildReport:
    report.seconds = time.perf_counter() - t0
    complete = not report.failed
    # the driver log says how the build ended (a log of an interrupted build has no such line)
    log.info("build %s %s: %d shard(s) written, %d failed, %d skipped, %.1f s", report.recipe_id[:12],
             "complete" if complete else "incomplete", report.built, len(report.failed), report.skipped,
             report.seconds)
    update_card(out, {"status": "complete" if complete else "incomplete",
                      "shards_done": report.n_shards - len(report.failed)})
    if report.failed:
        first = min(report.failed)
        if report.recipe_failed == set(report.failed):
            hint = "the recipe cannot render them (every run fails the same way): change what the error names"
        elif report.recipe_failed:
            hint = (f"re-run the same command to resume; {len(report.recipe_failed)} of them fail the same "
                    f"way on every run (shard {min(report.recipe_failed)}: "
                    f"{report.failed[min(report.recipe_failed)]}): change the recipe for those")
        else:
            hint = "re-run the same command to resume"
        raise BuildFailed(
            f"{len(report.failed)} of {report.n_shards} shard(s) failed (shard {first}: "
            f"{report.failed[first]}); {hint}"
        )
    return report
