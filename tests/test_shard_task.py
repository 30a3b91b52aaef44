"""The per-shard task (simaq_factory.orchestrate.task.run_shard) against independent oracles: each
stored sample is the library render of that sample index, the provenance record describes the
shard's samples, files and recipe, and a shard file left damaged by a crash is replaced."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from simaq_factory.acquisition.angles import a_max_for
from simaq_factory.cli.main import main
from simaq_factory.orchestrate.task import run_shard
from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import load_recipe, recipe_id, recipe_to_json
from simaq_factory.store.banks import load_banks
from simaq_factory.store.dataset import shard_file
from simaq_factory.store.layout import array_specs, provenance_path
from simaq_factory.versions import cpu_kernels, software_versions

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
SETS = ["dataset.shape=[32,32,32]", "dataset.chunk_z=4", "phantom.scale=0.15", "dataset.n_samples=3",
        "dataset.samples_per_shard=2", *small_banks.SETS]
CPU = torch.device("cpu")


def _recipe():
    return load_recipe(SMOKE, SETS)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("task") / "ds"
    args = [a for s in SETS for a in ("--set", s)]
    r = CliRunner().invoke(main, ["build", str(SMOKE), "-o", str(out), "--cluster", "inline", *args])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """run_shard sets the process's torch thread count, as on a worker; later tests keep theirs."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    return out


def _rerun(out: Path, shard: int, threads: int = 1) -> dict:
    return run_shard(str(out), recipe_to_json(_recipe()), shard, "cpu", threads)


def _provenance(out: Path, shard: int) -> dict:
    return json.loads(provenance_path(out, shard).read_text())


def test_each_stored_sample_is_the_render_of_its_own_index(copy: Path):
    """Rerunning shard 1 (one sample, index 2; the last shard is short) and shard 0 (indices 0, 1)
    stores for every index i exactly render_sample(recipe, i), padded with the array's fill value."""
    recipe = _recipe()
    specs = array_specs(recipe, a_max_for(recipe))
    for shard in (1, 0):
        _rerun(copy, shard)
    group = zarr.open_group(copy / "dataset.zarr", mode="r")
    banks = load_banks(copy, CPU)
    for i in range(3):
        arrays, _ = render_sample(recipe, i, CPU, banks=banks)
        for name, spec in specs.items():
            stored = np.asarray(group[name][i])
            a = np.asarray(arrays[name])
            region = tuple(slice(0, s) for s in a.shape)
            assert np.array_equal(stored[region], a, equal_nan=True), (name, i)
            pad = np.ones(stored.shape, bool)
            pad[region] = False
            if pad.any():
                assert np.all((stored[pad] == spec.fill_value) | (np.isnan(stored[pad]) & np.isnan(spec.fill_value))), name


def test_provenance_describes_the_shard_it_wrote(copy: Path):
    recipe = _recipe()
    specs = array_specs(recipe, a_max_for(recipe))
    for shard, (start, stop) in ((0, (0, 2)), (1, (2, 3))):
        summary = _rerun(copy, shard)
        prov = _provenance(copy, shard)
        assert summary["shard"] == shard and prov["shard"] == shard
        assert prov["samples"] == [start, stop]
        assert prov["recipe_id"] == recipe_id(recipe)
        # one record per sample, in order, each naming its index and its own seed stream
        assert [r["index"] for r in prov["sample_records"]] == list(range(start, stop))
        assert [r["seed"]["spawn_key"] for r in prov["sample_records"]] == [[i] for i in range(start, stop)]
        assert [r["seed"]["root"] for r in prov["sample_records"]] == [recipe.seed] * (stop - start)
        # the checksums are those of the files now on disk, one per array
        assert set(prov["checksums"]) == set(specs)
        for name, spec in specs.items():
            path = shard_file(copy, spec, shard)
            assert prov["checksums"][name] == hashlib.sha256(path.read_bytes()).hexdigest(), name
        assert prov["torch_threads"] == torch.get_num_threads()
        assert prov["cpu_kernels"] == cpu_kernels() and prov["versions"] == software_versions()


def test_a_shard_file_left_truncated_by_a_crash_is_replaced(copy: Path, built: Path):
    recipe = _recipe()
    specs = array_specs(recipe, a_max_for(recipe))
    before = _provenance(built, 0)["checksums"]
    for spec in specs.values():  # every array's shard file cut in half (its index sits at the end)
        path = shard_file(copy, spec, 0)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    _rerun(copy, 0)
    assert _provenance(copy, 0)["checksums"] == before  # the same bytes as the uninterrupted build
    group = zarr.open_group(copy / "dataset.zarr", mode="r")
    ref = zarr.open_group(built / "dataset.zarr", mode="r")
    for name in specs:
        assert np.array_equal(np.asarray(group[name][0:2]), np.asarray(ref[name][0:2]), equal_nan=True), name


def test_the_shard_runs_on_the_requested_thread_count_and_records_it(copy: Path):
    """threads > 0 sets torch's thread count for the task; 0 leaves the process's own. Either way
    the provenance records the count the shard actually ran with."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _rerun(copy, 1, threads=1)
        assert torch.get_num_threads() == 1 and _provenance(copy, 1)["torch_threads"] == 1
        torch.set_num_threads(2)
        _rerun(copy, 1, threads=0)
        assert torch.get_num_threads() == 2 and _provenance(copy, 1)["torch_threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_a_task_on_a_scheduler_s_worker_sizes_its_torch_pool_on_the_worker_s_machine(monkeypatch):
    """--scheduler builds passed the driver's core count to every task: a 2-core laptop driving
    64-core workers ran each shard on 2 threads (and a big driver oversubscribed small workers)."""
    import types

    import distributed

    import simaq_factory.orchestrate.task as task
    from simaq_factory.orchestrate.cluster import default_threads

    assert task._worker_threads() == 0  # not on a Dask worker: torch's default
    for nthreads in (1, 2, 64):
        fake = types.SimpleNamespace(state=types.SimpleNamespace(nthreads=nthreads))
        monkeypatch.setattr(distributed, "get_worker", lambda fake=fake: fake)
        assert task._worker_threads() == default_threads(nthreads) >= 1


def _files(out: Path) -> dict[str, bytes]:
    """Every file of ``out`` but its logs and lock file, by name."""
    from simaq_factory.store.outdir import LOCK

    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "logs" not in p.parts and p.name != LOCK}


def test_a_task_whose_build_lost_out_to_another_writes_nothing(copy: Path, monkeypatch: pytest.MonkeyPatch):
    """A task outlives its driver when the scheduler is lost (a worker's running thread cannot be
    stopped): it wrote its shard files and record after the driver had released OUT and said to run
    the build again, beside the new build's writes to the same files. With ``owner`` (the driver's
    pid, in OUT's lock file while it holds OUT) it writes nothing once the lock names another
    process: before it starts, or when that happens while it renders."""
    import simaq_factory.orchestrate.task as task
    from simaq_factory.orchestrate.task import OutTakenOver
    from simaq_factory.store.outdir import LOCK

    recipe_json = recipe_to_json(_recipe())
    (copy / LOCK).write_text("4242\n")  # the build (pid 4242) that submitted the tasks holds OUT
    run_shard(str(copy), recipe_json, 1, "cpu", 1, None, "4242")  # its own: written
    before = _files(copy)
    (copy / LOCK).write_text("5151\n")  # a new build took OUT over
    with pytest.raises(OutTakenOver, match=r"held by another process \(pid 5151\).*nothing written"):
        run_shard(str(copy), recipe_json, 0, "cpu", 1, None, "4242")
    assert _files(copy) == before

    render = task.render_sample

    def taken_over_while_rendering(*args, **kwargs):  # type: ignore[no-untyped-def]
        (copy / LOCK).write_text("5151\n")
        return render(*args, **kwargs)

    (copy / LOCK).write_text("4242\n")
    monkeypatch.setattr(task, "render_sample", taken_over_while_rendering)
    with pytest.raises(OutTakenOver):
        run_shard(str(copy), recipe_json, 0, "cpu", 1, None, "4242")
    assert _files(copy) == before  # neither the shard files nor the record were touched
    # without an owner (inline builds) the lock is not consulted
    monkeypatch.setattr(task, "render_sample", render)
    run_shard(str(copy), recipe_json, 0, "cpu", 1)


def test_a_task_compares_its_build_s_whole_claim_token_not_the_pid(copy: Path):
    """The lock file held a bare pid: a new build with the old driver's pid (a container's entry
    process, pid 1 on every run; another node) let the old build's leftover tasks write beside it.
    It now holds a token (pid, host, random id) per claim, and the task compares all of it. A lock
    file that is empty (rewritten by a new claimant) or unreadable shows no owner: refused too
    (was: let through)."""
    from simaq_factory.orchestrate.task import OutTakenOver
    from simaq_factory.store.outdir import LOCK, claim_out_dir, new_owner_token

    recipe_json = recipe_to_json(_recipe())
    old, new = new_owner_token(), new_owner_token()
    assert old.split()[:2] == new.split()[:2] and old != new  # one pid, one host, two claims
    (copy / LOCK).write_text(f"{new}\n")  # a new build with the same pid took OUT over
    before = _files(copy)
    with pytest.raises(OutTakenOver, match=rf"held by another process \(pid \d+, claim {new.split()[2][:8]}\), "
                                           rf"not by the build \(pid \d+, claim {old.split()[2][:8]}\)"):
        run_shard(str(copy), recipe_json, 0, "cpu", 1, None, old)
    assert _files(copy) == before
    for lock in ("", "\n"):  # a claimant between emptying the file and writing its token
        (copy / LOCK).write_text(lock)
        with pytest.raises(OutTakenOver, match=r"\.simaq-factory\.lock is empty or unreadable.*nothing written"):
            run_shard(str(copy), recipe_json, 0, "cpu", 1, None, old)
        assert _files(copy) == before
    (copy / LOCK).unlink()
    with pytest.raises(OutTakenOver, match="empty or unreadable"):
        run_shard(str(copy), recipe_json, 0, "cpu", 1, None, old)
    assert _files(copy) == before
    # the claim writes its token over a longer entry, whole and nothing after it; its tasks write
    (copy / LOCK).write_text("9" * 300 + "\n")
    with claim_out_dir(copy, recipe_id(_recipe()), token=old):
        assert (copy / LOCK).read_text() == f"{old}\n"
        run_shard(str(copy), recipe_json, 0, "cpu", 1, None, old)
    assert _files(copy) != before


def test_a_refused_build_names_the_holder_s_pid_and_a_foreign_host(copy: Path):
    """The lock file's token names pid and host: a build refused by a holder on another node says
    which node (the pid alone pointed at an unrelated process of this machine)."""
    from simaq_factory.errors import BadInput
    from simaq_factory.store.outdir import claim_out_dir, describe_owner

    rid = recipe_id(_recipe())
    with claim_out_dir(copy, rid, token="4242 node-b 0123456789abcdef"):
        with pytest.raises(BadInput, match=r"another simaq-factory process \(pid 4242 on host node-b\) is writing"):
            with claim_out_dir(copy, rid):
                pass
    assert describe_owner("77") == "pid 77"  # a lock file an earlier version wrote
