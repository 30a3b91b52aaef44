"""Exceptions with an exit code: bad input is 2, runtime failure is 1 (design §4).

Also the command-line side of that contract, shared by ``simaq-factory`` and ``simaq-train``:
:func:`fail` prints ``error: …`` on one line and exits, :class:`OneLineGroup` turns click's usage
errors into such a line with exit code 2.
"""

from __future__ import annotations

import sys
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
