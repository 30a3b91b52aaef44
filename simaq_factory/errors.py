"""Exceptions with an exit code: bad input is 2, runtime failure is 1 (design §4).

Also the command-line side of that contract, shared by ``simaq-factory`` and ``simaq-train``:
:func:`fail` prints ``error: …`` on one line and exits, :func:`handle_errors` maps a command's
exceptions to such lines, :class:`OneLineGroup` turns click's usage errors into one with exit code 2.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from simaq_factory.recipe.fields import RecipeError


class BadInput(RecipeError):
    """A path, flag or file is unusable. ``str(err)`` names it in one line; exit code 2."""


class BuildFailed(RuntimeError):
    """Some shards failed after their retries; exit code 1."""


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class OneLineGroup(click.Group):
    """Usage errors as one line (``error: …``) with exit code 2, like every other bad input."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exit_:
            sys.exit(exit_.exit_code)
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            fail(err.format_message().replace("\n", " ") + hint, 2)
        except click.ClickException as err:
            fail(err.format_message().replace("\n", " "), 2)
        except click.Abort:
            fail("aborted", 130)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map a command's exceptions to one-line messages and exit codes (2 bad input, 1 failure,
    130 interrupted); with debug logging (``-vv``) runtime failures keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RecipeError as err:
            fail(str(err), 2)
        except BuildFailed as err:
            fail(str(err), 1)
        except KeyboardInterrupt:
            fail("interrupted; run the same command again to resume", 130)
        except Exception as err:  # noqa: BLE001 - a runtime failure: one line, exit 1
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            fail(f"{type(err).__name__}: {err} (run with -vv for the traceback)", 1)

    return wrapper
