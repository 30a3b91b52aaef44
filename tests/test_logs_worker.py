"""A shard task's own record of its work: the worker's log file names the shard it started and holds
the traceback of a failed one, while distributed's multi-line "Compute Failed" block of that failure
stays off the console (the driver reports it in one line)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import simaq_factory.orchestrate.task as task


def _fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
    raise ValueError("2 cells do not fit a 32x32x32 volume")


def test_a_failed_shard_leaves_its_start_and_traceback_in_the_worker_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task, "_run_shard", _fail)
    with pytest.raises(ValueError):
        task.run_shard(str(tmp_path), {}, 1, "cpu", 1)
    (log,) = (tmp_path / "logs").glob("worker-*.log")
    text = log.read_text()
    assert "shard 1 started" in text
    assert "ERROR" in text and "shard 1 failed" in text
    assert "Traceback (most recent call last)" in text and "ValueError: 2 cells do not fit" in text


def test_distributed_compute_failed_block_is_dropped_after_a_shard_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task, "_run_shard", lambda *a, **k: {"shard": 0})
    task.run_shard(str(tmp_path), {}, 0, "cpu", 1)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("distributed.worker")
    handler = Collect()
    logger.addHandler(handler)
    try:
        logger.error("Compute Failed\nKey:       %s\nState:     %s\n", "shard-000001", "executing")
        logger.error("Worker stream died during communication")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Worker stream died during communication"]
