"""Building blocks for recipe sections: distributions and constrained fields.

Every recipe section is a frozen, keyword-only dataclass whose fields are declared with
:func:`spec`, which records the default, numeric bounds and a one-line doc. The generic loader in
:mod:`simaq_factory.recipe.schema` reads these declarations to validate YAML, fill defaults and
produce canonical JSON, so a stage package only declares its section and never parses YAML itself.

Distribution fields use :class:`Dist`, which has one of three shapes in YAML::

    radius: 50.0                                      # constant
    radius: {mean: 50, std: 2.5, min: 40, max: 60}    # normal, optionally clipped
    radius: {low: 1.0, high: 1.5}                     # uniform on [low, high)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["Dist", "RecipeError", "spec"]


class RecipeError(ValueError):
    """A recipe field is invalid. ``str(err)`` is one line naming the field, value and expectation."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def unknown_key(key: str, known: Any) -> str:
    """The message for a key that is not one of ``known``, with the closest name when one is close
    (a typo); the same words in recipes, training configs and ``--set``."""
    import difflib

    names = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}expected one of {', '.join(names)}"


def shown_value(value: Any) -> str:
    """A recipe value as the user wrote it: YAML's null, true and false, else its repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _num(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(path, f"expected a number, got {shown_value(value)}")
    if not math.isfinite(float(value)):
        raise RecipeError(path, f"expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Dist:
    """A scalar distribution: ``const``, ``normal`` (clipped to [min, max] when given) or ``uniform``.

    ``sample`` draws with an explicit ``numpy.random.Generator``; clipping follows the reference
    (``clip(N(mean, std), min, max)``), so the bounds carry probability mass.
    """

    kind: Literal["const", "normal", "uniform"]
    value: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    min: float | None = None
    max: float | None = None
    low: float = 0.0
    high: float = 0.0

    # ----------------------------------------------------------------------------------- builders
    @classmethod
    def const(cls, value: float) -> Dist:
        return cls(kind="const", value=float(value))

    @classmethod
    def normal(
        cls, mean: float, std: float, min: float | None = None, max: float | None = None
    ) -> Dist:
        return cls(
            kind="normal",
            mean=float(mean),
            std=float(std),
            min=None if min is None else float(min),
            max=None if max is None else float(max),
        )

    @classmethod
    def uniform(cls, low: float, high: float) -> Dist:
        return cls(kind="uniform", low=float(low), high=float(high))

    # ----------------------------------------------------------------------------------- sampling
    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...] | None = None) -> Any:
        """Draw ``size`` values (a Python float when ``size`` is None)."""
        if self.kind == "const":
            out = np.full(size, self.value) if size is not None else self.value
        elif self.kind == "uniform":
            out = rng.uniform(self.low, self.high, size)
        else:
            out = rng.normal(self.mean, self.std, size)
            if self.min is not None or self.max is not None:
                out = np.clip(out, self.min, self.max)
        return float(out) if size is None else np.asarray(out, dtype=np.float64)

    def support(self) -> tuple[float, float]:
        """The smallest interval holding every possible draw (may be infinite)."""
        if self.kind == "const":
            return (self.value, self.value)
        if self.kind == "uniform":
            return (self.low, self.high)
        if self.std == 0.0:
            v = float(np.clip(self.mean, self.min, self.max)) if (self.min, self.max) != (None, None) else self.mean
            return (v, v)
        lo = -math.inf if self.min is None else self.min
        hi = math.inf if self.max is None else self.max
        return (lo, hi)

    @property
    def center(self) -> float:
        """A representative value (const value, mean, or midpoint) used for size estimates."""
        if self.kind == "const":
            return self.value
        if self.kind == "uniform":
            return 0.5 * (self.low + self.high)
        lo, hi = self.support()
        return float(min(max(self.mean, lo), hi))

    # ------------------------------------------------------------------------------ (de)serialise
    def to_json(self) -> float | dict[str, float]:
        if self.kind == "const":
            return self.value
        if self.kind == "uniform":
            return {"low": self.low, "high": self.high}
        out: dict[str, float] = {"mean": self.mean, "std": self.std}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out

    @classmethod
    def parse(cls, value: Any, path: str) -> Dist:
        """Parse the YAML forms listed in the module docstring; errors name ``path``."""
        if isinstance(value, Dist):
            return value
        if isinstance(value, dict):
            keys = set(value)
            if keys <= {"low", "high"} and keys:
                if keys != {"low", "high"}:
                    raise RecipeError(path, f"a uniform distribution needs low and high, got {value!r}")
                low, high = _num(value["low"], f"{path}.low"), _num(value["high"], f"{path}.high")
                if low > high:
                    raise RecipeError(path, f"low must be <= high, got low={low:g}, high={high:g}")
                return cls.uniform(low, high)
            if "mean" in keys and keys <= {"mean", "std", "min", "max"}:
                mean = _num(value["mean"], f"{path}.mean")
                std = _num(value.get("std", 0.0), f"{path}.std")
                if std < 0:
                    raise RecipeError(f"{path}.std", f"must be >= 0, got {std:g}")
                lo = None if value.get("min") is None else _num(value["min"], f"{path}.min")
                hi = None if value.get("max") is None else _num(value["max"], f"{path}.max")
                if lo is not None and hi is not None and lo > hi:
                    raise RecipeError(path, f"min must be <= max, got min={lo:g}, max={hi:g}")
                return cls.normal(mean, std, lo, hi)
            unknown = sorted(keys - {"mean", "std", "min", "max", "low", "high"})
            if unknown:
                raise RecipeError(
                    f"{path}.{unknown[0]}",
                    "unknown key; a distribution is a number, {mean, std, min, max} or {low, high}",
                )
            raise RecipeError(
                path, f"expected a number, {{mean, std, min, max}} or {{low, high}}, got {value!r}"
            )
        return cls.const(_num(value, path))


def spec(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """Declare a recipe field with its default, inclusive/exclusive bounds and a one-line doc.

    Bounds apply to plain numbers, to each element of tuples of numbers, and to the support of a
    :class:`Dist` (its min/max, low/high or constant; an unclipped normal's mean).
    """
    metadata = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
