"""Dask clients: an embedded LocalCluster (default) or an existing scheduler by address."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from simaq_factory.errors import BadInput

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


def slurm_cluster(exe: Any, *, gpu: bool) -> Any:
    """A dask-jobqueue SLURMCluster for ``execution.slurm`` (jobs are submitted on ``scale``)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise BadInput("--cluster", "slurm needs dask-jobqueue: pip install 'simaq-factory[slurm]'") from None
    cfg = exe.slurm
    gpus = cfg.gpus_per_job or (1 if gpu else 0)
    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    # one worker process per GPU of a job, each advertising one GPU; the processes are named
    # NAME-<job>-<k>, and process k renders on GPU k (task.worker_device)
    processes = max(1, min(gpus, cfg.cores))
    worker_args = ["--resources", "GPU=1"] if gpus else []
    return SLURMCluster(
        queue=cfg.queue, account=cfg.account, walltime=cfg.walltime, cores=cfg.cores, processes=processes,
        memory=cfg.memory, job_extra_directives=directives, worker_extra_args=worker_args,
        local_directory=cfg.local_directory, python=cfg.python or sys.executable,
        silence_logs="error", job_name="simaq-factory",
    )


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
        if shutil.which("sbatch") is None:
            raise BadInput("--cluster", "slurm submits jobs with sbatch, which is not on PATH here; run "
                           "the build on a SLURM login node")
        cluster = slurm_cluster(execution, gpu=gpu)
        cluster.scale(jobs=workers)
        client = Client(cluster)
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
        cluster.close()
