"""Annotated recipes for ``simaq-factory init``: every field with its value, meaning and default.

A template is one of the ready recipes of ``recipes/`` (shipped inside the package as
``simaq_factory/recipes``) or ``reference`` (no field set: the defaults). The annotated text lists
*every* field of the resolved template, each under a comment with its one-line doc and what it
accepts, and marks values that differ from the default. The defaults are the SimAQ reference's,
except the deliberate deviations (fixed reference bugs) that the fields' docs state. It resolves to exactly
the template's recipe (same id, same execution settings), so a user edits a complete, valid recipe
instead of guessing field names.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from simaq_factory.recipe.fields import Dist, RecipeError

__all__ = ["TEMPLATES", "annotated_recipe", "template_text"]

#: Template name → what it is (``simaq-factory init --help`` lists these).
TEMPLATES: dict[str, str] = {
    "reference": "every field at its default (the SimAQ reference's, but for the deviations each field's "
                 "comment states), 4 samples of 512³",
    "smoke": "4 × 64³ on CPU in under a minute (mostly the one-off noise banks), what CI builds",
    "demo-cpu": "32 × 128³ on CPU",
    "benchmark-cpu": "30 × 64³ evaluation set with sinograms",
    "train-cpu": "the 64³ data of the CPU training proof",
    "paper-train": "the paper's 512³ training data, for GPU workers",
    "paper-benchmark": "the paper's 512³ evaluation set, for GPU workers",
    "extended": "beyond the reference: nuclei, anti-aliasing, 3D deformation, Poisson and detector noise, misalignment",
}

_WIDTH = 100
_NONE = type(None)


def _recipes_dir() -> Path:
    """The ready recipes: packaged (``simaq_factory/recipes``) or, in a checkout, ``recipes/``."""
    packaged = resources.files("simaq_factory") / "recipes"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "recipes"  # a checkout whose link is a plain file


def template_text(name: str) -> str:
    """The YAML text of template ``name`` (empty for ``reference``)."""
    if name not in TEMPLATES:
        raise RecipeError("--template", f"unknown template {name!r}; expected one of {', '.join(TEMPLATES)}")
    if name == "reference":
        return ""
    path = _recipes_dir() / f"{name}.yaml"
    try:
        return path.read_text()
    except OSError as err:  # an installation without its recipes
        raise RuntimeError(f"template {name!r} is not installed ({path}: {err.strerror})") from None


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.split("\n", 1)[0]  # drops the "..." document end of a plain scalar


def _g(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _bounds(meta: typing.Mapping[str, Any]) -> str:
    lo = next(((k, meta[k]) for k in ("ge", "gt") if meta.get(k) is not None), None)
    hi = next(((k, meta[k]) for k in ("le", "lt") if meta.get(k) is not None), None)
    if lo and hi:
        return f"in {'[' if lo[0] == 'ge' else '('}{_g(lo[1])}, {_g(hi[1])}{']' if hi[0] == 'le' else ')'}"
    if lo:
        return f"{'>=' if lo[0] == 'ge' else '>'} {_g(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == 'le' else '<'} {_g(hi[1])}"
    return ""


def _accepts(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    """What a field accepts, in words: ``integer >= 1``, ``one of 'zx', 'xy'``, ``distribution in (0, 180]``."""
    origin = get_origin(tp)
    bounds = _bounds(meta)
    if origin is Literal:
        return "one of " + ", ".join(_flow(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        parts = [_accepts(a, meta) for a in get_args(tp) if a is not _NONE]
        return " or ".join(parts) + (" or null" if _NONE in get_args(tp) else "")
    if origin is tuple:
        args = get_args(tp)
        inner = _accepts(args[0], {})
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"list of {count}{inner}s" + (f", each {bounds}" if bounds else "")
    if tp is Dist:
        return "distribution" + (f", values {bounds}" if bounds else "")
    word = {int: "integer", float: "number", bool: "true or false", str: "string"}.get(tp, str(tp))
    return f"{word} {bounds}".strip()


def _section_doc(cls: type[Any]) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses writes when there is none
        return ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def _comment(text: str, indent: str) -> list[str]:
    text = text.replace("``", "`")
    return textwrap.wrap(text, _WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)


def _emit(cls: type[Any], values: dict[str, Any], defaults: dict[str, Any], depth: int) -> list[str]:
    indent = "  " * depth
    lines: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, value, default = hints[f.name], values[f.name], defaults[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type) and tp is not Dist:
            if depth == 0 and lines:
                lines.append("")
            lines += _comment(_section_doc(tp), indent)
            lines.append(f"{indent}{f.name}:")
            lines += _emit(tp, value, default, depth + 1)
            continue
        doc = str(f.metadata.get("doc", "")).rstrip(".")
        accepts = _accepts(tp, f.metadata)
        lines += _comment(f"{doc} ({accepts})" if doc else accepts, indent)
        line = f"{indent}{f.name}: {_flow(value)}"
        if value != default:
            line += f"  # default: {_flow(default)}"
        lines.append(line)
    return lines


def annotated_recipe(name: str) -> str:
    """The annotated YAML of template ``name``; it resolves to the same recipe as the template."""
    # the recipe model imports every stage's config (and torch): only when a recipe is written, so
    # that importing this module for TEMPLATES keeps `simaq-factory --help` fast
    from simaq_factory.recipe.io import recipe_to_json, resolve
    from simaq_factory.recipe.model import Recipe
    from simaq_factory.versions import _version
    from simaq_factory.yamlio import load_yaml

    text = template_text(name)
    data = load_yaml(text) or {}
    values = recipe_to_json(resolve(data))
    defaults = recipe_to_json(resolve({}))
    header = []
    for line in text.splitlines():  # the template's own leading comment block
        if not line.startswith("#"):
            break
        if "not given here" not in line:  # the written file gives every field
            header.append(line)
    lines = [
        f"# simaq-factory recipe, template {name!r}: {TEMPLATES[name]}.",
        f"# Written by `simaq-factory init` (simaq-factory {_version('simaq-factory')}).",
        *(["#"] + header if header else []),
        "#",
        "# Every field is listed with its value. A field left out takes its default (marked where it",
        "# differs): the SimAQ reference's, except where a field's comment states a deliberate deviation",
        "# (a fixed reference bug); unknown fields are errors. A distribution is a number (constant),",
        "# {mean, std, min, max} (normal, clipped to [min, max]) or {low, high} (uniform). Check the",
        "# result with `simaq-factory validate FILE`; `execution` does not change the recipe id.",
        "",
    ]
    lines += _emit(Recipe, values, defaults, 0)
    return "\n".join(lines) + "\n"
