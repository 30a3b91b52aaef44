"""Shared helpers of the benchmark scripts: argument checks, one-line errors, the run record.

The scripts are run as ``python benchmarks/x.py``; Python puts ``benchmarks/`` on ``sys.path``, so
they ``import _common``. Bad input gets one line on stderr naming the flag and exit status 2, before
any work; ``run_record`` is what every JSON carries so a figure can be reproduced (the command,
the date, the machine, its load and thread settings, the software and every parameter of the run).
Each ``main`` calls ``begin_run()`` once its arguments are checked, so the record holds the load
average at the start of the work as well as at its end.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from simaq_factory.versions import load_average  # no torch: the scripts import it after simaq_factory

EXIT_BAD_INPUT = 2

_START_LOAD: list[float] | None = load_average()  # at import; begin_run() re-takes it


def begin_run() -> None:
    """Take the load average at the start of the work (each ``main`` calls it after its checks)."""
    global _START_LOAD
    _START_LOAD = load_average()


class Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line (``prog: error: argument --x: why``), exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2 (bad input found after parsing, e.g. a recipe field)."""
    sys.stderr.write(f"{Path(sys.argv[0]).name}: error: {message}\n")
    sys.exit(EXIT_BAD_INPUT)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    """An argparse type: a finite float ``> 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0.0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def check_output_path(path: str | None, flag: str = "--json") -> None:
    """Exit 2 with one line unless ``path`` can be written (checked before the work starts)."""
    if path is None:
        return
    if not path:
        fail(f"argument {flag}: empty path")
    p = Path(path)
    if p.is_dir():
        fail(f"argument {flag}: {path} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        fail(f"argument {flag}: directory {parent} does not exist")
    existed = p.exists()
    try:  # really open it: permission bits say nothing on read-only mounts or /proc
        with open(p, "a", encoding="utf-8"):
            pass
    except OSError as err:
        fail(f"argument {flag}: {path}: {err.strerror or 'not writable'}")
    if not existed:
        p.unlink(missing_ok=True)  # written at the end; no empty file left if the run fails

def resolve_device_arg(name: str, flag: str = "--device"):  # -> torch.device
    """``simaq_factory.device.resolve_device`` with its refusal (no CUDA, unknown name, a CUDA index
    that does not exist) as one line naming ``flag``, exit 2."""
    import torch

    from simaq_factory.device import resolve_device
    from simaq_factory.recipe.fields import RecipeError

    try:
        dev = resolve_device(name)
    except RecipeError as err:
        fail(f"argument {flag}: {err.message}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        fail(f"argument {flag}: {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software() -> dict[str, str | None]:
    """``software_versions()`` plus the comparison libraries (scikit-image, astra-toolbox) when
    importable (None otherwise)."""
    from simaq_factory.versions import software_versions

    out: dict[str, str | None] = dict(software_versions())
    out["scikit-image"] = _version("scikit-image")
    astra = None
    try:
        import astra as _astra  # noqa: PLC0415 - optional

        astra = getattr(_astra, "__version__", None) or _version("astra-toolbox")
    except Exception:  # noqa: BLE001 - not importable: recorded as None
        astra = None
    out["astra-toolbox"] = astra
    return out


def run_record(args: argparse.Namespace, device: Any = None, **extra: Any) -> dict[str, Any]:
    """``versions.run_record`` for a benchmark script: the load average taken by ``begin_run``, the
    GPU named when ``device`` is CUDA (or, with no device given, when CUDA is available), the
    comparison libraries' versions (``software``) and every parameter (``vars(args)`` plus
    ``extra``)."""
    import torch

    from simaq_factory.versions import run_record as record

    gpu = None
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        gpu = torch.cuda.get_device_name(device)
    elif device is None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return record({**vars(args), **extra}, gpu, _START_LOAD, software())


def write_json(path: str | None, obj: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
