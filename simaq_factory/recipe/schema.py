"""Generic validation of recipe sections declared as frozen dataclasses.

A section class lists its fields with :func:`simaq_factory.recipe.fields.spec`; this module turns a
YAML mapping into an instance (defaults filled, types and bounds checked, unknown keys refused) and
back into plain JSON. Errors are :class:`RecipeError` with the dotted path of the field, the value
and what was expected, e.g. ``acquisition.tilt_span_deg.max: must be <= 180, got 200``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from simaq_factory.recipe.fields import Dist, RecipeError, shown_value, unknown_key

__all__ = ["parse_section", "section_to_json", "field_docs"]

_NONE = type(None)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _bound(b: float) -> str:
    """A bound as written: integers whole (2**63, not 9.22337e+18), others as ``:g``."""
    return str(b) if isinstance(b, int) else f"{b:g}"


def _check_bounds(x: float, path: str, meta: typing.Mapping[str, Any], shown: Any = None) -> None:
    shown = x if shown is None else shown
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    if ge is not None and not x >= ge:
        raise RecipeError(path, f"must be >= {_bound(ge)}, got {shown!r}")
    if gt is not None and not x > gt:
        raise RecipeError(path, f"must be > {_bound(gt)}, got {shown!r}")
    if le is not None and not x <= le:
        raise RecipeError(path, f"must be <= {_bound(le)}, got {shown!r}")
    if lt is not None and not x < lt:
        raise RecipeError(path, f"must be < {_bound(lt)}, got {shown!r}")


def _check_dist_bounds(d: Dist, path: str, meta: typing.Mapping[str, Any]) -> None:
    if not any(meta.get(k) is not None for k in ("ge", "gt", "le", "lt")):
        return
    if d.kind == "const":
        _check_bounds(d.value, path, meta)
        return
    if d.kind == "uniform":
        _check_bounds(d.low, _join(path, "low"), meta)
        _check_bounds(d.high, _join(path, "high"), meta)
        return
    lo, hi = d.support()
    lower_needed = meta.get("ge") is not None or meta.get("gt") is not None
    upper_needed = meta.get("le") is not None or meta.get("lt") is not None
    if lower_needed and math.isinf(lo):
        raise RecipeError(_join(path, "min"), "needed: this normal distribution must be bounded below")
    if upper_needed and math.isinf(hi):
        raise RecipeError(_join(path, "max"), "needed: this normal distribution must be bounded above")
    if lower_needed:
        _check_bounds(lo, _join(path, "min" if d.min is not None else "mean"), meta)
    if upper_needed:
        _check_bounds(hi, _join(path, "max" if d.max is not None else "mean"), meta)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not _NONE)
    if origin is tuple:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _parse_value(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if _NONE in args:
                return None
            raise RecipeError(path, f"expected {_describe(tp)}, got null")
        errors: list[RecipeError] = []
        for arg in args:
            if arg is _NONE:
                continue
            try:
                return _parse_value(arg, value, path, meta)
            except RecipeError as err:
                errors.append(err)
        # Prefer the most specific message (a bound or nested error over a type mismatch).
        specific = [e for e in errors if e.path != path or "expected" not in e.message]
        if specific:
            raise specific[0]
        raise RecipeError(path, f"expected {_describe(tp)}, got {shown_value(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise RecipeError(path, f"expected {_describe(tp)}, got {shown_value(value)}")
        return choices[choices.index(value)]  # the declared choice: 3.0 is 3 (one recipe id, an int)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(path, f"expected true or false, got {shown_value(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise RecipeError(path, f"expected an integer, got {shown_value(value)}")
        _check_bounds(value, path, meta)
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(path, f"expected a number, got {shown_value(value)}")
        if not math.isfinite(float(value)):
            raise RecipeError(path, f"expected a finite number, got {shown_value(value)}")
        _check_bounds(float(value), path, meta)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(path, f"expected a string, got {shown_value(value)}")
        return value
    if tp is Dist:
        dist = Dist.parse(value, path)
        _check_dist_bounds(dist, path, meta)
        return dist
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RecipeError(path, f"expected a list, got {shown_value(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(args[0], v, f"{path}[{i}]", meta) for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(path, f"expected a list of {len(args)} values, got {shown_value(value)}")
        return tuple(_parse_value(a, v, f"{path}[{i}]", meta) for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if value is None:  # `dataset:` with its lines commented out, `--set dataset=null`
            raise RecipeError(path, "expected a mapping, got null: leave the section out (or write {}) for "
                                    "its defaults")
        return parse_section(tp, value, path)
    raise TypeError(f"{path}: unsupported recipe field type {tp!r}")  # a programming error


@functools.cache
def _type_hints(cls: type[Any]) -> dict[str, Any]:
    """``typing.get_type_hints`` of a section class, once per class (it re-evaluates every string
    annotation: 17 ms of each shard task's 20 ms recipe parse)."""
    return get_type_hints(cls)


def parse_section(cls: type[Any], data: Any, path: str = "") -> Any:
    """Build ``cls`` from a mapping, filling defaults; raise :class:`RecipeError` on bad input."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(path or "recipe", f"expected a mapping, got {shown_value(data)}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise RecipeError(_join(path, shown_value(key) if key is None else str(key)), unknown_key(str(key), fields))
    kwargs = {
        name: _parse_value(hints[name], data[name], _join(path, name), f.metadata)
        for name, f in fields.items()
        if name in data
    }
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:  # a section's own __post_init__ check
        raise _post_init_error(cls, path, str(err)) from None


def _post_init_error(cls: Any, path: str, message: str) -> RecipeError:
    """The error of a ``__post_init__`` message: at the field it starts with ("blur.kernel_size must
    …", "edge=30 …"), its name then dropped from the message when it is the subject ("NAME:" or
    "NAME must …"; "kernel_size and nominal_taps exclude …" keeps it); else at the section."""
    words = message.split(maxsplit=1)
    head = words[0].rstrip(":,") if words else ""
    name = head.split("=", 1)[0].rsplit(".", 1)[-1]
    if name not in {f.name for f in dataclasses.fields(cls)}:
        return RecipeError(path or "recipe", message)
    subject = words[0].endswith(":") or (len(words) > 1 and words[1].startswith("must "))
    if "=" not in head and len(words) > 1 and subject:
        message = words[1]  # "kernel_size must be odd" at …kernel_size: "must be odd"
    return RecipeError(f"{path}.{name}" if path else name, message)


def section_to_json(obj: Any) -> Any:
    """Plain JSON of a section (dataclasses → dicts, Dist → number/dict, tuples → lists)."""
    if isinstance(obj, Dist):
        return obj.to_json()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: section_to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [section_to_json(v) for v in obj]
    return obj


def field_docs(cls: type[Any], path: str = "") -> list[tuple[str, str, Any]]:
    """(dotted path, doc, default JSON) for every leaf field, for annotated recipe templates."""
    out: list[tuple[str, str, Any]] = []
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        sub = _join(path, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type) and tp is not Dist:
            out.extend(field_docs(tp, sub))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        out.append((sub, str(f.metadata.get("doc", "")), section_to_json(default)))
    return out
