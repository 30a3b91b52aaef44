"""The stderr line a progress bar is drawn on, shared by the bars of both CLIs.

A bar drawn in place on a terminal (``\\r[###...] …`` with no newline) leaves the cursor at the end
of its line; whatever stderr prints next (a log record, a warning, the one-line error or interrupt
message of :func:`simaq_factory.errors.fail`) would continue that line. Bars call :func:`drawn`
after each in-place draw; :func:`end_line` ends such a line, once, before anything else is printed:
the console log handlers call it through :class:`EndBarLine`, and commands call it (through
:func:`bar_line`) when their work ends, however it ends.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

_open = False  # a bar line is drawn and not yet ended


def drawn() -> None:
    """Note that a bar was just drawn in place on stderr (its line is not ended)."""
    global _open
    _open = True


def end_line() -> None:
    """End the bar's line on stderr if one is drawn (a no-op otherwise: no blank lines)."""
    global _open
    if _open:
        _open = False
        click.echo("", err=True)


@contextmanager
def bar_line() -> Iterator[None]:
    """Around a command's work that draws a bar: the bar's line is ended however the work ends
    (success, error, Ctrl-C), so the result or the error message starts on a line of its own."""
    try:
        yield
    finally:
        end_line()


class EndBarLine(logging.Filter):
    """On a console handler: ends a drawn bar's line before the record is written (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        end_line()
        return True


def install_console_filter(kind: type[logging.Filter]) -> None:
    """Put a ``kind()`` filter on the root logger's console (stream, not file) handlers, once each
    (idempotent). Filters run in the order installed: one that drops records goes before
    :class:`EndBarLine`, which ends the bar's line for every record it lets through."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                and not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(kind())


def install_end_bar_line() -> None:
    """Put :class:`EndBarLine` on the root logger's console (stream, not file) handlers (idempotent)."""
    install_console_filter(EndBarLine)


class PhaseBar:
    """``progress(phase, done, total)`` of a long command (verify, freeze, export, status; the
    library's :data:`~simaq_factory.store.dataset.Progress`) on stderr, as ``phase [###...] done/total``.

    Quick work prints nothing: a phase shows once it has run :attr:`QUIET_S` seconds. On a
    terminal the bar is then redrawn in place (at most :attr:`REDRAW_S` apart, and when the phase
    ends); elsewhere (a log file, a batch job) a line is printed at most every :attr:`EVERY_S`
    seconds and when the phase ends, so hours of hashing or decoding are neither silent nor a line
    per shard."""

    QUIET_S = 1.0
    REDRAW_S = 0.1
    EVERY_S = 30.0
    WIDTH = 30

    def __init__(self, command: str) -> None:
        self.command = command
        self.tty = sys.stderr.isatty()
        self.phase: str | None = None
        self.started = 0.0
        self.shown = 0.0  # when this phase was last shown; 0: not yet
        self.done = -1

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != self.phase:
            end_line()  # the last phase's bar stays on its line
            self.phase, self.started, self.shown, self.done = phase, now, 0.0, -1
        if done == self.done:
            return
        self.done = done
        finished = done >= total
        if now - self.started < self.QUIET_S and not (finished and self.shown):
            return
        every = self.REDRAW_S if self.tty else self.EVERY_S
        if self.shown and not finished and now - self.shown < every:
            return
        filled = int(self.WIDTH * done / max(total, 1))
        line = f"{self.command}: {phase} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}"
        self.shown = now
        if self.tty:
            click.echo("\r" + line.ljust(70), nl=False, err=True)
            drawn()
        else:
            click.echo(line, err=True)
