"""Lazy package exports (PEP 562), so that reading a recipe or a dataset's records never loads torch.

``simaq_factory.phantom``, ``.artifacts`` and ``.tomo`` export their public names from submodules
that import torch (and scipy, perlin-numpy). Their recipe sections (``phantom.config``,
``artifacts.config``, ``tomo.config``) are pure data, but importing a submodule runs its package's
``__init__`` first: with eager re-exports, ``simaq-factory status`` or a recipe typo paid ~5 s of
torch import on a 2-vCPU machine before doing anything. Each package instead maps its exported
names to their modules and imports one on first attribute access.

An exported name must not also be a submodule's name: the import system binds a loaded submodule
to its package attribute, which would then shadow the lazily exported object
(tests/test_recipe.py checks both).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose ``exports`` map a public name to the
    submodule (relative to ``package``) that defines it."""
    module_globals = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        try:
            submodule = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        module_globals[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(module_globals) | set(exports))

    return __getattr__, __dir__
