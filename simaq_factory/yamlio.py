"""YAML as our files are read: safe, a key given twice in one mapping is an error, and numbers and
booleans are YAML 1.2's.

Plain YAML keeps the last of two equal keys, silently dropping everything written under the first
(a whole recipe section). PyYAML follows YAML 1.1 for numbers, which every other parser (and YAML
1.2, 2009) dropped: ``1e-3`` is the string ``'1e-3'`` (1.1 floats need a dot), ``017`` is octal
15, ``0b101`` is 5 and ``12:00:00`` is the base-60 integer 43200, so a seed written with a
leading zero silently changed and an edited SLURM ``walltime`` stopped being a string. Here
integers are decimal (``017`` is 17), ``0x``/``0o`` hex/octal, floats have a dot or an exponent
(or are ``.inf``/``.nan``), and anything else (``12:00:00``, ``0b101``) is a string. Booleans are
``true``/``false`` only: YAML 1.1's ``yes``/``no``/``on``/``off`` are strings, so ``mode: off``
means the choice ``'off'`` (it was the boolean false, refused). Merge keys
(``<<: *anchor``) work as in every YAML reader. Used for recipes, training configs and ``--set``
values.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["UniqueKeyLoader", "load_yaml"]

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and reads YAML 1.2 numbers."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:  # '<<: *anchor': the merged keys may be overridden here
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            seen = key in lines
        except TypeError:  # a list or mapping as a key ('? [a, b]')
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key (a list or mapping)", key_node.start_mark) from None
        if seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {lines[key] + 1})", key_node.start_mark
            )
        lines[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


def _int(loader: UniqueKeyLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    try:
        if digits[:2] in ("0x", "0X"):
            return sign * int(digits[2:], 16)
        if digits[:2] in ("0o", "0O"):
            return sign * int(digits[2:], 8)
        return sign * int(digits, 10)
    except ValueError:  # an explicit '!!int' on something that is not one
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not an integer", node.start_mark) from None


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
UniqueKeyLoader.add_constructor(_INT_TAG, _int)
# YAML 1.1's int, float and bool resolvers out (sexagesimal, leading-zero octal, 0b binary, yes/no/
# on/off), YAML 1.2's in; a copy of the table, so yaml.SafeLoader itself is unchanged
UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG, _BOOL_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
UniqueKeyLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"),
)
UniqueKeyLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^(?:[-+]?[0-9][0-9_]*|[-+]?0[xX][0-9a-fA-F_]+|[-+]?0[oO][0-7_]+)$"),
    list("-+0123456789"),
)
UniqueKeyLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse ``text``; raises ``yaml.YAMLError`` (with its line) on bad syntax or a duplicate key."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - UniqueKeyLoader is a SafeLoader
