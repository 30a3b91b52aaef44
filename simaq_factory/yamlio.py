"""YAML as our files are read: safe, a key given twice in one mapping is an error, and ``1e-3`` is
a number.

Plain YAML keeps the last of two equal keys, silently dropping everything written under the first
(a whole recipe section). PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-3``): ``1e-3``
would be the string ``'1e-3'``; YAML 1.2 and every other parser read it as a float, and so do we.
Used for recipes, training configs and ``--set`` values.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["UniqueKeyLoader", "load_yaml"]


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {lines[key] + 1})", key_node.start_mark
            )
        lines[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# YAML 1.2 exponent floats without a dot (1e-3, 2E+5, .5e1); add_implicit_resolver copies the
# resolver table on first use, so yaml.SafeLoader itself is unchanged.
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse ``text``; raises ``yaml.YAMLError`` (with its line) on bad syntax or a duplicate key."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - UniqueKeyLoader is a SafeLoader
