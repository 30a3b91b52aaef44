"""A real Dask scheduler and two worker processes on loopback: build, lose a worker, finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
SETS = ["--set", "dataset.shape=[32,32,32]", "--set", "dataset.chunk_z=4", "--set", "phantom.scale=0.15",
        "--set", "dataset.n_samples=8", "--set", "dataset.samples_per_shard=1"]
ENV = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning", "PYTHONUNBUFFERED": "1"}


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture()
def dask_cluster(tmp_path):
    """``dask scheduler`` + two ``dask worker --no-nanny`` processes; yields (address, workers)."""
    sched_file = tmp_path / "scheduler.json"
    procs = [_spawn("-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard", "--scheduler-file", str(sched_file))]
    deadline = time.monotonic() + 60
    while not sched_file.exists():
        assert time.monotonic() < deadline, "scheduler did not start"
        time.sleep(0.1)
    time.sleep(0.2)
    address = json.loads(sched_file.read_text())["address"]
    workers = [_spawn("-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                      "--no-dashboard", "--name", f"w{i}") for i in range(2)]
    procs += workers
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
    try:
        yield address, workers
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simaq_factory.cli.main", "build", SMOKE, *args, *SETS],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def test_build_on_scheduler_survives_a_killed_worker(dask_cluster, tmp_path):
    address, workers = dask_cluster
    ref = tmp_path / "ref"
    assert _build("-o", str(ref), "--cluster", "inline").returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "simaq_factory.cli.main", "build", SMOKE, "-o", str(out),
                             "--scheduler", address, *SETS], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "provenance").glob("shard-*.json")) if out.exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.killpg(workers[0].pid, signal.SIGKILL)  # a worker dies mid-build
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "wrote 8 shard(s)" in stdout
    g, r = (zarr.open_group(p / "dataset.zarr", mode="r") for p in (out, ref))
    for name in ("phantom", "labels", "recon"):
        assert np.array_equal(g[name][...], r[name][...]), name
    provs = sorted((out / "provenance").glob("shard-*.json"))
    assert [p.name for p in provs] == [f"shard-{s:06d}.json" for s in range(8)]
    logs = {p.name.split("-")[0] for p in (out / "logs").iterdir()}
    assert logs == {"driver", "worker"}


def test_unreachable_scheduler_exit_2_and_nothing_written(tmp_path):
    out = tmp_path / "out"
    result = _build("-o", str(out), "--scheduler", "tcp://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --scheduler: cannot reach Dask scheduler")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_slurm_job_script_requests_gpus_and_advertises_the_resource():
    pytest.importorskip("dask_jobqueue")
    from simaq_factory.orchestrate.cluster import slurm_cluster
    from simaq_factory.recipe.io import resolve

    recipe = resolve({"execution": {"slurm": {"queue": "gpu", "account": "lab", "cores": 4,
                                              "memory": "16GB", "gpus_per_job": 1, "walltime": "00:30:00"}}})
    cluster = slurm_cluster(recipe.execution, gpu=False)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for needle in ("#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH --gres=gpu:1", "#SBATCH -t 00:30:00",
                   "--resources GPU=1", "--nthreads 4", sys.executable):
        assert needle in script, (needle, script)
