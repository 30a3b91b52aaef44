"""Exceptions with an exit code: bad input is 2, runtime failure is 1 (design §4).

Also the command-line side of that contract, shared by ``simaq-factory`` and ``simaq-train``:
:func:`fail` prints ``error: …`` on one line and exits, :func:`handle_errors` maps a command's
exceptions to such lines, :class:`OneLineGroup` turns click's usage errors into one with exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from simaq_factory.recipe.fields import RecipeError


class BadInput(RecipeError):
    """A path, flag or file is unusable. ``str(err)`` names it in one line; exit code 2."""


class BuildFailed(RuntimeError):
    """Some shards failed after their retries; exit code 1."""


class RunFailed(RuntimeError):
    """A run stopped for a reason its one-line message gives in full (e.g. training diverged);
    exit code 1, no traceback hint."""


class MissingExtra(RunFailed):
    """An optional package a command needs is not installed: exit 1, naming it and the extra."""


#: optional module -> (its pip name, the extra of this project that installs it)
EXTRAS = {"tifffile": ("tifffile", "io"), "mrcfile": ("mrcfile", "io"), "nrrd": ("pynrrd", "io"),
          "skimage": ("scikit-image", "baseline"), "dask_jobqueue": ("dask-jobqueue", "slurm"),
          "triton": ("triton", "triton")}
#: the optional module that reads and writes each volume file suffix
SUFFIX_MODULES = {".tif": "tifffile", ".tiff": "tifffile", ".mrc": "mrcfile", ".rec": "mrcfile", ".map": "mrcfile",
                  ".nrrd": "nrrd"}


def optional(module: str, purpose: str) -> Any:
    """Import ``module`` (of a package keyed in :data:`EXTRAS`) or raise :class:`MissingExtra`:
    ``{purpose} needs the Python package X: pip install 'simaq-factory[EXTRA]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pip_name, extra = EXTRAS[module.split(".")[0]]
        raise MissingExtra(f"{purpose} needs the Python package {pip_name}: pip install "
                           f"'simaq-factory[{extra}]'") from None


class DamagedData(RuntimeError):
    """Stored data cannot be read back as written (a corrupt chunk, a shard that fails its
    checksum): a runtime failure, not bad input. ``str(err)`` is one line naming the store, array
    and sample and the check to run; exit code 1 (with ``-vv`` the traceback)."""


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence the logger ``name`` inside the block: a reader library's own "ERROR …" line about a
    file we report on in one line of our own (tifffile logs before it raises)."""
    log = logging.getLogger(name)
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


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


class PathParam(click.ParamType):
    """A file or folder path on the command line; an empty one is refused (``""`` would be the working
    directory: ``-o "$OUT"`` with OUT unset wrote a dataset, an export or a report where the user stood)."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail(f"empty path ({value!r}); give a file or folder name", param, ctx)
        return value


#: the type of every path argument and option of the command-line tools
PATH = PathParam()


#: The interrupt message of commands that pick up where they stopped (build, fit, freeze, export,
#: simaq-factory baseline): ``@handle_errors(resumes=True)``.
RESUME_MESSAGE = "interrupted; run the same command again to resume"
#: The interrupt message of every other command: they finish their output atomically, or write none.
RESTART_MESSAGE = "interrupted; no output was completed: run the command again to start over"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and ``kill`` send) as an interrupt: the same clean-up of
    temporary files runs as for Ctrl-C, and the command exits 143 (128 + SIGTERM)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _quiet_abandoned_io() -> None:
    """After an interrupt: zarr's I/O runs on an asyncio loop in another thread; the tasks of the
    write the interrupt cut short are dropped at exit, and asyncio logs each ("Task was destroyed but
    it is pending!", with a traceback-like listing) and Python warns of coroutines never awaited:
    dozens of lines after the one-line message. Nothing is lost by them (the shard is redone on
    resume), so they are not shown."""
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def _traceback_hint() -> str:
    """How to see the traceback, with ``-vv`` where click takes it (before the command):
    ``run 'simaq-factory -vv build ...' for the traceback``."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.parent is None:
        return "run with -vv for the traceback"
    return f"run '{ctx.find_root().info_name} -vv {ctx.info_name} ...' for the traceback"


def handle_errors(fn: Callable[..., Any] | None = None, *, resumes: bool = False) -> Any:
    """Map a command's exceptions to one-line messages and exit codes (2 bad input, 1 failure,
    130 interrupted); with debug logging (``-vv``) runtime failures keep their traceback.

    ``@handle_errors`` or ``@handle_errors(resumes=True)``; the latter for commands that resume when
    run again, whose interrupt message says so."""
    interrupted = RESUME_MESSAGE if resumes else RESTART_MESSAGE

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import signal
            import threading

            main = threading.current_thread() is threading.main_thread()  # signal handlers live there
            previous = signal.signal(signal.SIGTERM, _terminate) if main else None
            try:
                return func(*args, **kwargs)
            except RecipeError as err:
                fail(str(err), 2)
            except (BuildFailed, RunFailed) as err:
                fail(str(err), 1)
            except DamagedData as err:
                if logging.getLogger().isEnabledFor(logging.DEBUG):
                    raise
                fail(str(err), 1)
            except KeyboardInterrupt as err:
                _quiet_abandoned_io()
                fail(("terminated (SIGTERM); " if isinstance(err, Terminated) else "") + interrupted,
                     143 if isinstance(err, Terminated) else 130)
            except BrokenPipeError:  # `simaq-factory info OUT | head`: the reader has gone
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
                sys.exit(141)  # 128 + SIGPIPE, as a tool killed by the signal
            except Exception as err:  # noqa: BLE001 - a runtime failure: one line, exit 1
                if logging.getLogger().isEnabledFor(logging.DEBUG):
                    raise
                fail(f"{type(err).__name__}: {err} ({_traceback_hint()})", 1)
            finally:
                if main:
                    signal.signal(signal.SIGTERM, previous)

        return wrapper

    return decorate(fn) if fn is not None else decorate


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def enclosing_dataset(path: str | Path) -> Path | None:
    """The simaq-factory dataset folder (``dataset.zarr/`` beside ``recipe.resolved.json`` or
    ``provenance/``) that ``path`` is, or lies in; None when there is none. The names are spelt out
    here, not taken from ``store.layout``: simaq_train imports this module, and must not import the
    factory's store."""
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        if (folder / "dataset.zarr").is_dir() and ((folder / "recipe.resolved.json").is_file()
                                                   or (folder / "provenance").is_dir()):
            return folder
    return None


def refuse_inside_dataset(path: str | Path, what: str, *, allowed: Path | None = None) -> None:
    """:class:`BadInput` naming ``what`` when ``path`` lies in a dataset folder (other than ``allowed``):
    a file written into a frozen dataset breaks its seal (``verify`` then calls it damaged), and one
    written into an open dataset would be sealed in by ``freeze`` as if the dataset had made it."""
    ds = enclosing_dataset(path)
    if ds is None or (allowed is not None and ds == Path(allowed).resolve()):
        return
    try:
        import json

        frozen = json.loads((ds / "dataset.zarr" / "zarr.json").read_text())["attributes"]["status"] == "frozen"
    except Exception:  # noqa: BLE001 - a card that does not read: a dataset all the same
        frozen = False
    if frozen:
        raise BadInput(what, f"inside the frozen dataset {ds}, which refuses later writes (`verify` would report "
                             "the new file): write it outside the dataset")
    raise BadInput(what, f"inside the dataset {ds} (`freeze` would seal it in as part of the dataset): write it "
                         "outside the dataset")


def check_output_dir(path: str | Path, name: str | None = None, *, in_dataset: Path | None = None) -> Path:
    """Before any work: :class:`BadInput` naming ``name`` (default ``path``) and the reason unless
    directory ``path`` exists or can be created, and files can be written in it, outside every
    simaq-factory dataset folder (:func:`refuse_inside_dataset`; but ``in_dataset``, whose own
    command writes it).

    Nothing is left behind: the check creates and removes a probe directory in ``path``, or in its
    nearest existing ancestor when ``path`` does not exist yet (so ``/proc/x``, ``/sys/x``, a path
    under a file, a read-only file system are refused before the command computes anything)."""
    p = Path(path)
    what = str(p) if name is None else name
    refuse_inside_dataset(p, what, allowed=in_dataset)
    if p.exists() and not p.is_dir():
        raise BadInput(what, "exists and is not a directory" if what == str(p) else f"{p} is not a directory")
    probe = p
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(what, f"{probe} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".simaq-write-probe-", dir=probe))
    except OSError as err:
        if probe == p:
            raise BadInput(what, f"cannot write in {probe} ({_why(err)})") from None
        raise BadInput(what, f"cannot create the output directory ({probe}: {_why(err)})") from None
    return p


def check_output_file(path: str | Path, name: str | None = None, *, in_dataset: Path | None = None) -> Path:
    """:func:`check_output_dir` for the directory of output file ``path``; refuses a directory at ``path``."""
    p = Path(path)
    what = str(p) if name is None else name
    if p.is_dir():
        raise BadInput(what, "is a directory; give the file to write")
    check_output_dir(p.parent if str(p.parent) else Path("."), what, in_dataset=in_dataset)
    return p
