"""What a shard task tells the driver besides its result: the warnings it logged (a worker process
writes its records to its own log file only, so the driver shows them on the console) and the
failures the recipe decides, which are reported once instead of being retried by Dask."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import simaq_factory.orchestrate.task as task
from simaq_factory.cli.main import main
from simaq_factory.phantom.sample import PhantomFitError

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
BEADS = logging.getLogger("simaq_factory.artifacts.fiducials")


def _warning_shard(*args: Any, warnings: task.TaskWarnings | None = None, **kwargs: Any) -> dict[str, Any]:
    assert warnings is not None
    warnings.sample = 3
    BEADS.warning("placed %d of %d fiducial beads", 2, 5)
    other = threading.Thread(target=BEADS.warning, args=("another task's warning",))
    other.start()
    other.join()
    warnings.sample = None
    BEADS.warning("after the samples")
    logging.getLogger("simaq_factory.x").info("not a warning")
    return {"shard": 0}


def test_a_task_returns_its_own_warnings_with_the_sample_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task, "_run_shard", _warning_shard)
    summary = task.run_shard(str(tmp_path), {}, 0, "cpu", 1)
    assert summary["warnings"] == ["sample 3: placed 2 of 5 fiducial beads", "after the samples"]
    # the collector is gone with the task
    assert not any(isinstance(h, task.TaskWarnings) for h in logging.getLogger("simaq_factory").handlers)


def test_a_task_hands_back_at_most_max_task_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def many(*args: Any, **kwargs: Any) -> dict[str, Any]:
        for i in range(task.MAX_TASK_WARNINGS + 5):
            BEADS.warning("warning %d", i)
        return {"shard": 0}

    monkeypatch.setattr(task, "_run_shard", many)
    got = task.run_shard(str(tmp_path), {}, 0, "cpu", 1)["warnings"]
    assert len(got) == task.MAX_TASK_WARNINGS + 1
    assert got[0] == "warning 0" and got[-1] == "5 more warning(s) in the worker's log file"


def test_a_recipe_failure_is_returned_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def misfit(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise PhantomFitError("2 cells do not fit a 32x32x32 (z, y, x) volume")

    monkeypatch.setattr(task, "_run_shard", misfit)
    summary = task.run_shard(str(tmp_path), {}, 4, "cpu", 1)
    assert summary["failed"] == "PhantomFitError: 2 cells do not fit a 32x32x32 (z, y, x) volume"
    assert summary["recipe_failure"] is True and summary["shard"] == 4
    (log,) = (tmp_path / "logs").glob("worker-*.log")
    text = log.read_text()
    assert "shard 4 failed (the recipe decides it: not retried)" in text and "Traceback" in text


def _worker_logs(out: Path) -> str:
    return "".join(p.read_text() for p in sorted((out / "logs").glob("worker-*.log")))


#: One candidate position per bead: some beads of the smoke recipe's samples 0 and 1 (shard 0) find
#: no room; no shrinking of cells that do not fit: sample 2 or 3 (shard 1) of 2 cells fails (32³).
CASE = ("--set", "artifacts.fiducials.max_candidates_per_bead=1", "--set", "phantom.layout.min_scale_fraction=0.99",
        "--set", "execution.retries=2", "--set", "dataset.shape=[32,32,32]", "--set", "dataset.chunk_z=4",
        "--set", "phantom.scale=0.18")


def test_a_localcluster_build_shows_worker_warnings_and_does_not_retry_recipe_failures(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="simaq_factory.orchestrate.driver")
    result = CliRunner().invoke(main, ["build", SMOKE, *small_banks.ARGS, "-o", str(out), "--workers", "1", *CASE])
    assert result.exit_code == 1, result.output
    relayed = [r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING and "fiducial beads" in r.getMessage()]
    in_worker = [line for line in _worker_logs(out).splitlines() if "fiducial beads" in line]
    assert relayed and len(relayed) == len(in_worker)
    assert all(line.startswith("shard 0, sample ") for line in relayed)
    # shard 1 failed once, not 1 + execution.retries times
    assert "1 of 2 shard(s) failed (shard 1: PhantomFitError: 2 cells do not fit" in result.stderr
    assert sum("not retried: the recipe decides it" in r.getMessage() for r in caplog.records) == 1
    logs = _worker_logs(out)
    assert logs.count("shard 1 started") == 1 and logs.count("shard 1 failed") == 1
    assert "1 done, 1 pending" in CliRunner().invoke(main, ["status", str(out)]).output


def test_an_inline_build_keeps_a_failed_shards_traceback_off_the_console(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "simaq_factory", "build", SMOKE, *small_banks.ARGS, "-o", str(out),
                             "--cluster", "inline", *CASE], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert [line.split(": PhantomFitError")[0] for line in result.stderr.splitlines() if "shard 1 failed" in line] \
        == ["ERROR simaq_factory.orchestrate.driver: shard 1 failed"]
    assert "WARNING simaq_factory.artifacts.fiducials: placed" in result.stderr
    # the traceback is in the log files
    assert "Traceback" in _worker_logs(out) and "PhantomFitError" in _worker_logs(out)
