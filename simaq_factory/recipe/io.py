"""Load a recipe from YAML, apply ``--set`` overrides, resolve, hash."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from simaq_factory.recipe.fields import RecipeError
from simaq_factory.recipe.model import Recipe, check_recipe
from simaq_factory.recipe.schema import parse_section, section_to_json
from simaq_factory.yamlio import load_yaml

ID_EXCLUDED = ("execution",)


class RecipeFileError(RecipeError):
    """The recipe file itself cannot be read or parsed."""


def read_yaml(path: str | os.PathLike[str], *, require_fields: bool = False) -> dict[str, Any]:
    """Read a recipe file into a mapping; errors name the file (and line for YAML syntax).

    A file that sets no field (empty, or comments only) means every reference default: a warning,
    or with ``require_fields`` (a build: 4 × 512³ from a failed copy) a :class:`RecipeFileError`."""
    if not os.fspath(path).strip():  # Path("") is ".", a directory
        raise RecipeFileError("RECIPE", "empty path; give the recipe file, e.g. recipes/smoke.yaml")
    path = Path(path)
    if not path.exists():
        raise RecipeFileError(str(path), "recipe file not found")
    if not path.is_file():
        raise RecipeFileError(str(path), "recipe path is not a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeFileError(str(path), f"cannot read recipe: {err}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        context = getattr(err, "context", None)  # "expected a single document in the stream" …
        problem = f"{context}, {problem}" if context else problem
        raise RecipeFileError(str(path), f"invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeFileError(str(path), f"a recipe is a mapping of sections, got {type(data).__name__}")
    if not data and require_fields:
        raise RecipeFileError(str(path), "the recipe sets no field (empty, or comments only); to build the "
                                         "reference defaults on purpose, write them out with `simaq-factory "
                                         "init FILE --template reference`")
    if not data:
        logging.getLogger(__name__).warning(
            "%s sets no field: every field takes its reference default (4 samples of 512³; "
            "`simaq-factory init` writes a recipe with every field)", path)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML) to a copy of ``data``.

    A section or distribution the recipe leaves out starts from its default, so that
    ``--set phantom.cell.radius.mean=55`` changes the mean of the default distribution only.
    """
    out = copy.deepcopy(data)
    defaults = recipe_to_json(Recipe()) if overrides else {}
    for item in overrides:
        if "=" not in item:
            raise RecipeError("--set", f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not key.strip() or any(not p for p in parts):
            raise RecipeError("--set", f"expected a dotted key like dataset.n_samples, got {key!r}")
        if not raw.strip():  # `--set dataset.n_samples=$N` with N unset
            raise RecipeError(key.strip(), f"--set {item!r} gives no value (write null to mean null)")
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as err:
            why = getattr(err, "problem", None)
            raise RecipeError(key, f"cannot parse override value {raw!r}" + (f" ({why})" if why else "")) from None
        node, default = out, defaults
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            default = default.get(part) if isinstance(default, dict) else None
            if child is None:
                child = node[part] = copy.deepcopy(default) if isinstance(default, dict) else {}
            if not isinstance(child, dict):
                raise RecipeError(".".join(parts[: i + 1]), f"is not a section, cannot set {key}")
            node = child
        node[parts[-1]] = value
    return out


def resolve(data: dict[str, Any]) -> Recipe:
    """Validate a mapping into a :class:`Recipe` with defaults filled; raise RecipeError."""
    recipe: Recipe = parse_section(Recipe, data)
    check_recipe(recipe)
    return recipe


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None, *,
                require_fields: bool = False) -> Recipe:
    """The recipe of the YAML file at ``path`` with ``--set``-style ``overrides`` applied
    (``require_fields``: see :func:`read_yaml`)."""
    return resolve(apply_overrides(read_yaml(path, require_fields=require_fields), overrides or []))


def recipe_to_json(recipe: Recipe) -> dict[str, Any]:
    return section_to_json(recipe)  # type: ignore[no-any-return]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _plus_zero(obj: Any) -> Any:
    """``obj`` with every -0.0 as 0.0: the same recipe (``jitter_deg: -0.0``) has one id."""
    if isinstance(obj, dict):
        return {k: _plus_zero(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plus_zero(v) for v in obj]
    return 0.0 if isinstance(obj, float) and obj == 0.0 else obj


def recipe_id(recipe: Recipe) -> str:
    """sha256 of the canonical JSON of the resolved recipe, ``execution`` excluded."""
    payload = _plus_zero({k: v for k, v in recipe_to_json(recipe).items() if k not in ID_EXCLUDED})
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
