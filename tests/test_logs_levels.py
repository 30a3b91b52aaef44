"""Log files must not change what the console shows: ``-vv``'s DEBUG records keep reaching it while
a build's log file is attached, and the logger's level is restored when the file is detached."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from simaq_factory.orchestrate.logs import attach_log_file, detach_log_file


@pytest.fixture
def sf_logger():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("simaq_factory")
    before = logger.level
    yield logger
    logger.setLevel(before)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_debug_console_keeps_debug_records_while_a_file_is_attached(tmp_path: Path, sf_logger) -> None:  # type: ignore[no-untyped-def]
    sf_logger.setLevel(logging.NOTSET)  # what -vv amounts to: the root logger at DEBUG
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(logging.DEBUG)
    console = _Collect()
    sf_logger.addHandler(console)
    try:
        path = attach_log_file(tmp_path, "driver")
        logging.getLogger("simaq_factory.phantom.layout").debug("layout detail")
        logging.getLogger("simaq_factory.orchestrate").info("shard done")
        detach_log_file(path)
    finally:
        sf_logger.removeHandler(console)
        root.setLevel(root_level)
    assert [r.getMessage() for r in console.records] == ["layout detail", "shard done"]
    text = path.read_text()
    assert "shard done" in text and "layout detail" not in text  # the file keeps its INFO level
    assert sf_logger.level == logging.NOTSET


def test_level_lowered_for_the_file_is_restored_on_detach(tmp_path: Path, sf_logger) -> None:  # type: ignore[no-untyped-def]
    sf_logger.setLevel(logging.NOTSET)
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(logging.WARNING)
    try:
        a = attach_log_file(tmp_path, "driver")
        b = attach_log_file(tmp_path / "other", "worker")  # nested, as in an inline build
        assert sf_logger.level == logging.INFO
        detach_log_file(b)
        assert sf_logger.level == logging.INFO  # a file is still attached
        detach_log_file(a)
        assert sf_logger.level == logging.NOTSET
    finally:
        root.setLevel(root_level)
