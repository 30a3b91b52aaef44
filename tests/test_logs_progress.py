"""On a terminal, whatever stderr prints while a progress bar is drawn in place starts on a line of
its own (log records, the one-line error / interrupt message), and a bar ends only a line it drew
(no blank lines). A fake stream that says it is a terminal stands in for one."""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

import pytest

import simaq_factory.cli.progress as progress_mod
import simaq_factory.orchestrate.driver as driver_mod
from simaq_factory.cli.main import _build
from simaq_factory.cli.progress import EndBarLine, bar_line, install_end_bar_line
from simaq_factory.cli.score import _progress
from simaq_train.cli import Bar


class FakeTTY(io.TextIOWrapper):
    """A text stream over bytes (as click expects of stderr) that says it is a terminal."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", newline="\n", write_through=True)

    def isatty(self) -> bool:
        return True

    def getvalue(self) -> str:
        self.flush()
        return self.buffer.getvalue().decode()  # type: ignore[attr-defined]


@pytest.fixture
def tty(monkeypatch: pytest.MonkeyPatch) -> FakeTTY:
    """The fake terminal; each test puts it in place as sys.stderr (see :func:`_use`) as pytest's
    capture puts back its own sys.stderr between a fixture's setup and the test."""
    monkeypatch.setattr(progress_mod, "_open", False)
    return FakeTTY()


def _use(monkeypatch: pytest.MonkeyPatch, stream: FakeTTY) -> None:
    monkeypatch.setattr(sys, "stderr", stream)


@pytest.fixture
def console(tty: FakeTTY):  # type: ignore[no-untyped-def]
    """A console log handler on the fake terminal, as the CLIs' basicConfig makes one."""
    handler = logging.StreamHandler(tty)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(EndBarLine())
    logger = logging.getLogger("simaq_factory.test_progress")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)
    logger.propagate = True


def test_build_bar_is_ended_before_a_log_record_and_before_the_error(
        tty: FakeTTY, console: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, tty)
    def fake_build(rec: Any, out: Any, *, progress: Any, **kw: Any) -> None:
        progress(1, 2, {"shard": 0, "seconds": 1.5})
        console.warning("placed 60 of 191 fiducial beads")
        progress(2, 2, None)
        raise RuntimeError("1 of 2 shard(s) failed")

    monkeypatch.setattr(driver_mod, "build", fake_build)
    with pytest.raises(RuntimeError):
        _build("recipes/smoke.yaml", "unused", None, "inline", (), [])
    text = tty.getvalue()
    assert "shard 0 1.5s" in text
    assert "\nWARNING simaq_factory.test_progress: placed 60" in text
    assert text.endswith("\n")  # handle_errors' "error: …" starts on a new line
    assert text.count("\n") == 3  # the bar's line before the warning, the warning, the bar's last line


def test_score_bar_is_ended_when_its_work_fails(tty: FakeTTY, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, tty)
    show = _progress("scored")
    with pytest.raises(KeyboardInterrupt), bar_line():
        show(3, 10)
        raise KeyboardInterrupt
    assert tty.getvalue().startswith("\r[") and tty.getvalue().endswith("\n")
    assert tty.getvalue().count("\n") == 1


def test_score_bar_ends_its_line_once_at_the_last_step(tty: FakeTTY, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, tty)
    show = _progress("scored")
    with bar_line():
        show(1, 2)
        show(2, 2)
    assert tty.getvalue().count("\n") == 1


def test_train_bar_done_ends_only_a_drawn_line(tty: FakeTTY, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, tty)
    bar = Bar(True)
    bar.done()  # no bar drawn yet (fit: an epoch with no log step): no blank line
    assert tty.getvalue() == ""
    bar.show("epoch 1 batch 5/5", 1.0)
    bar.done()
    bar.done()
    assert tty.getvalue().count("\n") == 1 and tty.getvalue().endswith("\n")


def test_train_bar_is_ended_before_a_log_record(tty: FakeTTY, console: logging.Logger,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, tty)
    bar = Bar(True)
    bar.show("big.npy: slice 80/160", 0.5)
    console.error("something")
    assert "\nERROR simaq_factory.test_progress: something\n" in tty.getvalue()


def test_install_end_bar_line_is_idempotent_and_skips_files(tmp_path: Any) -> None:
    root = logging.getLogger()
    stream = logging.StreamHandler(io.StringIO())
    file = logging.FileHandler(tmp_path / "x.log")
    root.addHandler(stream)
    root.addHandler(file)
    try:
        install_end_bar_line()
        install_end_bar_line()
        assert sum(isinstance(f, EndBarLine) for f in stream.filters) == 1
        assert not any(isinstance(f, EndBarLine) for f in file.filters)
    finally:
        root.removeHandler(stream)
        root.removeHandler(file)
        file.close()
