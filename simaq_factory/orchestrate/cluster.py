"""Dask clients: an embedded LocalCluster (default) or an existing scheduler by address."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from simaq_factory.errors import BadInput, RunFailed, optional, quiet_logger

log = logging.getLogger(__name__)


@dataclass
class ClusterHandle:
    client: object  # distributed.Client
    dashboard: str | None
    n_workers: int
    description: str


def default_threads(workers: int) -> int:
    """Torch threads per worker so that workers × threads ≈ the machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def slurm_processes(exe: Any, *, gpu: bool) -> int:
    """Worker processes per SLURM job: one per GPU it requests (at most one per core), else one."""
    gpus = exe.slurm.gpus_per_job or (1 if gpu else 0)
    return max(1, min(gpus, exe.slurm.cores))


def load_jobqueue() -> Any:
    """The ``dask_jobqueue`` module, imported on the main thread with the SIGINT handler kept.

    Its ``runner`` module installs a SIGINT handler (``sys.exit``) when it is imported: off the main
    thread that raises ("signal only works in main thread"), and every ``--cluster slurm`` build
    failed, since the cluster starts on a thread; on the main thread it replaced the driver's
    handler, and a Ctrl-C ended the build with exit 0 and no message. So the driver imports it here
    first (:func:`check_slurm`), and the handler in place before is put back. Raises
    :class:`~simaq_factory.errors.MissingExtra` without the package."""
    if "dask_jobqueue" in sys.modules:
        return sys.modules["dask_jobqueue"]
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("dask_jobqueue is imported on the main thread first (cluster.load_jobqueue): its "
                           "import installs a signal handler")
    before = signal.getsignal(signal.SIGINT)
    try:
        return optional("dask_jobqueue", "--cluster slurm")
    finally:
        if before is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, before)


def check_slurm() -> None:
    """``--cluster slurm`` can submit jobs from here: ``sbatch`` on the PATH (else BadInput, exit 2)
    and dask-jobqueue installed (imported now: call on the main thread, see :func:`load_jobqueue`)."""
    if shutil.which("sbatch") is None:
        raise BadInput("--cluster", "slurm submits jobs with sbatch, which is not on PATH here; run "
                       "the build on a SLURM login node")
    load_jobqueue()


def slurm_cluster(exe: Any, *, gpu: bool) -> Any:
    """A dask-jobqueue SLURMCluster for ``execution.slurm``, with no job yet (:func:`submit_jobs`)."""
    SLURMCluster = load_jobqueue().SLURMCluster
    cfg = exe.slurm
    gpus = cfg.gpus_per_job or (1 if gpu else 0)
    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    # one worker process per GPU of a job, each advertising one GPU; the processes are named
    # NAME-<job>-<k>, and process k renders on GPU k (task.worker_device)
    processes = slurm_processes(exe, gpu=gpu)
    worker_args = ["--resources", "GPU=1"] if gpus else []
    # each process runs one shard task at a time (Dask threads = jobqueue's cores / processes = 1)
    # with cores / processes torch threads (driver); the job books all its cores (job_cpu). With
    # Dask threads = cores, a CPU job ran `cores` tasks at once, each with `cores` torch threads
    return SLURMCluster(
        queue=cfg.queue, account=cfg.account, walltime=cfg.walltime, cores=processes, job_cpu=cfg.cores,
        processes=processes, memory=cfg.memory, job_extra_directives=directives, worker_extra_args=worker_args,
        local_directory=cfg.local_directory, python=cfg.python or sys.executable,
        silence_logs="error", job_name="simaq-factory",
    )


def submit_jobs(cluster: Any, jobs: int) -> None:
    """Submit ``jobs`` SLURM jobs of ``cluster`` and wait for sbatch to accept each of them.

    ``cluster.scale`` only schedules the submissions: a job that sbatch refused (a bad partition or
    account) was logged by tornado with a traceback, and the build created OUT and waited forever
    for workers. Here sbatch's refusal is :class:`BadInput` naming ``execution.slurm`` with sbatch's
    own error line, before OUT is claimed."""
    while len(cluster.worker_spec) < jobs:  # what scale(jobs=...) adds, without its fire-and-forget start
        cluster.worker_spec.update(cluster.new_worker_spec())
    try:
        cluster.sync(cluster._correct_state)  # submits the jobs (sbatch) and waits for the answers
    except RuntimeError as err:
        from distributed.core import Status

        for job in cluster.workers.values():  # a refused job was never started: failed, so that the
            if getattr(job, "job_id", None) is None:  # cluster's close (which asserts it) accepts it
                job.status = Status.failed
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        said = [line.removeprefix("sbatch: error:").strip() for line in lines if line.startswith("sbatch: error")]
        if said:  # SLURM refused what the recipe asks for (partition, account, walltime, memory, gres)
            raise BadInput("execution.slurm", f"sbatch refused the job: {'; '.join(said)}") from None
        raise RunFailed(f"submitting the SLURM jobs failed: {lines[-1] if lines else type(err).__name__}") from None


#: How long the --scheduler probe waits for a Dask scheduler to answer (seconds).
PROBE_TIMEOUT = 8.0


def _not_a_scheduler(address: str, timeout: float | None = None) -> str | None:
    """Why ``address`` (``tcp://``) is not a Dask scheduler one can use, or None when one answered (or
    the address is of another kind, left to distributed). distributed's own connect retries a
    refused connection until its timeout, waits without end on a service that never answers its
    handshake (an HTTP server: the dashboard port), and reads another protocol's bytes as frame
    lengths (a MemoryError of exabytes); this asks the scheduler who it is, within ``timeout``
    (default :data:`PROBE_TIMEOUT`)."""
    import asyncio

    from distributed.comm import connect, parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, loc = parse_address(address)
        host, port = parse_host_port(loc, default_port=8786)
    except (ValueError, TypeError):
        return None  # distributed names what is wrong with it
    if scheme != "tcp":
        return None  # tls:// needs the security settings Client takes; inproc/ucx: no TCP to probe
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return f"connection refused at {host}:{port} (is `dask scheduler` running there?)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s (the wrong host, or a firewall?)"
    except OSError as err:
        return f"{host}:{port}: {err.strerror or type(err).__name__}"

    async def identity() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        return (f"no Dask scheduler answered within {timeout:g} s (another service on that port? "
                "the dashboard is usually :8787, the scheduler :8786)")
    except Exception as err:  # noqa: BLE001 - another protocol's bytes: anything can fail (MemoryError too)
        return (f"the service there does not speak Dask's protocol ({type(err).__name__}); the scheduler "
                "usually listens on :8786")
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        return f"it is a Dask {kind}, not a scheduler" if isinstance(reply, dict) else (
            f"the service there answered {kind}, not as a Dask scheduler")
    return None


@contextlib.contextmanager
def open_cluster(
    *, scheduler: str | None, workers: int, gpu: bool = False, memory_limit: str = "auto",
    execution: Any = None, kind: str = "local",
) -> Iterator[ClusterHandle]:
    """Yield a connected client; close whatever this function started on exit.

    ``scheduler`` connects to a running ``dask scheduler`` (its workers are theirs to manage);
    otherwise a LocalCluster of ``workers`` single-threaded worker processes is started (torch
    inside each task uses its own thread pool, see :func:`default_threads`). With ``gpu`` the local
    workers advertise one ``GPU`` resource each.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        why = _not_a_scheduler(scheduler)
        if why:
            raise BadInput("--scheduler", f"cannot reach Dask scheduler at {scheduler!r}: {why}")
        try:
            client = Client(scheduler, timeout="8s")
        except (OSError, TimeoutError) as err:
            raise BadInput("--scheduler", f"cannot reach Dask scheduler at {scheduler!r}: {err}") from None
        except ValueError as err:  # a malformed address
            raise BadInput("--scheduler", f"{scheduler!r} is not a scheduler address such as "
                                          f"tcp://host:8786 ({err})") from None
        try:
            n = len(client.scheduler_info().get("workers", {}))
            yield ClusterHandle(client, client.dashboard_link, n, f"scheduler {scheduler}")
        finally:
            client.close()
        return
    dashboard = ":0" if importlib.util.find_spec("bokeh") is not None else None
    if kind == "slurm":
        check_slurm()
        cluster = slurm_cluster(execution, gpu=gpu)
        try:
            submit_jobs(cluster, workers)
            client = Client(cluster)
        except BaseException:
            cluster.close()  # cancels the jobs that were accepted
            raise
        try:
            yield ClusterHandle(client, client.dashboard_link if dashboard else None, workers,
                                f"SLURM cluster with {workers} job(s)")
        finally:
            client.close()
            cluster.close()
        return
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=dashboard,
        silence_logs=logging.ERROR,
        resources={"GPU": 1} if gpu else None,
        memory_limit=memory_limit,
        preload=["simaq_factory.orchestrate.quiet_workers"],  # Ctrl-C is the driver's alone
    )
    client = Client(cluster)
    try:
        link = client.dashboard_link if dashboard else None
        yield ClusterHandle(client, link, workers, f"LocalCluster with {workers} worker(s)")
    finally:
        client.close()
        # every result is in by now: a worker process slow to exit is killed by its nanny, whose
        # "still alive after 4.0 seconds, killing" warning ended every build as if something failed
        with quiet_logger("distributed.nanny"):
            cluster.close()
