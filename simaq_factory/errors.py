"""Exceptions with an exit code: bad input is 2, runtime failure is 1 (design §4)."""

from __future__ import annotations

from simaq_factory.recipe.fields import RecipeError


class BadInput(RecipeError):
    """A path, flag or file is unusable. ``str(err)`` names it in one line; exit code 2."""


class BuildFailed(RuntimeError):
    """Some shards failed after their retries; exit code 1."""
