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


def install_end_bar_line() -> None:
    """Put :class:`EndBarLine` on the root logger's console (stream, not file) handlers (idempotent)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                and not any(isinstance(f, EndBarLine) for f in handler.filters):
            handler.addFilter(EndBarLine())
