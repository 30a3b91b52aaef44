"""Log files in the dataset directory: one per process (``OUT/logs/driver-…``, ``OUT/logs/worker-…``)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

LOG_DIR = "logs"
FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
_attached: dict[str, logging.Handler] = {}
#: ``simaq_factory``'s own level before the first file was attached, when attaching had to lower
#: it to INFO (so the file receives INFO); put back once the last file is detached.
_saved_level: int | None = None


def attach_log_file(out: Path, role: str) -> Path:
    """Send this process's ``simaq_factory`` log records (INFO and above) to a file in ``out``.

    Idempotent per (process, file); returns the file's path. The logger's level is lowered to INFO
    only when it lets less than INFO through (it is never raised: a ``-vv`` console keeps its DEBUG
    records, which the file handler's own INFO level keeps out of the file), and
    :func:`detach_log_file` puts it back.
    """
    global _saved_level
    path = out / LOG_DIR / f"{role}-{socket.gethostname()}-{os.getpid()}.log"
    key = str(path)
    if key in _attached:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("simaq_factory")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        if not _attached:
            _saved_level = logger.level
        logger.setLevel(logging.INFO)  # console handlers keep their own (CLI-chosen) level
    _attached[key] = handler
    return path


def detach_log_file(path: Path) -> None:
    """Remove the file handler :func:`attach_log_file` added for ``path``; after the last one, put
    ``simaq_factory``'s level back as it was before the first."""
    global _saved_level
    handler = _attached.pop(str(path), None)
    if handler is not None:
        logger = logging.getLogger("simaq_factory")
        logger.removeHandler(handler)
        handler.close()
        if not _attached and _saved_level is not None:
            logger.setLevel(_saved_level)
            _saved_level = None


#: ``extra`` for records meant for the log files in OUT only: a shard task's failure and its
#: traceback, which the driver reports on the console in one line of its own (an inline build runs
#: the task in the driver's process, whose console would show both).
FILE_ONLY = {"file_only": True}


class NotFileOnly(logging.Filter):
    """On a console handler (``simaq_factory.cli.progress.install_console_filter``): drops the
    records logged with :data:`FILE_ONLY`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class _ComputeFailedFilter(logging.Filter):
    """Drops distributed's "Compute Failed" record of a worker whose task raised: a dozen lines per
    attempt on the worker's stderr (which a LocalCluster's workers share with the console), with
    the exception as a repr and the traceback as one quoted string. The shard task logs the failure
    and its traceback to the worker's log file itself (:func:`~simaq_factory.orchestrate.task.run_shard`),
    and the driver reports it in one line; distributed's other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Compute Failed"))


def quiet_compute_failed() -> None:
    """Install :class:`_ComputeFailedFilter` on ``distributed.worker`` in this process (idempotent)."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _ComputeFailedFilter) for f in logger.filters):
        logger.addFilter(_ComputeFailedFilter())


class _AbandonedGatherFilter(logging.Filter):
    """Drops the tracebacks Dask's client leaves behind a Ctrl-C, after the driver's own one-line
    report (nothing is lost; the user would see a page of Dask internals):

    - asyncio's "Task exception was never retrieved" for ``AllExit``: a wait on shard futures that
      Ctrl-C abandoned, ending once the interrupted driver releases them;
    - tornado's "Exception in callback" for the ``NameError`` of ``distributed.utils.sync``'s
      ``cancel`` callback, which Ctrl-C schedules and which reads the future before the waiting
      coroutine has made it (a race in distributed: ``cannot access free variable 'future'``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[0] is None:
            return True
        exc, tb = record.exc_info[0], record.exc_info[2]
        if exc.__name__ == "AllExit" and exc.__module__.startswith("distributed"):
            return False
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code if tb is not None else None
        return not (issubclass(exc, NameError) and code is not None and code.co_name == "cancel"
                    and Path(code.co_filename).parts[-2:] == ("distributed", "utils.py"))


#: The loggers Dask's client reports those through.
_ABANDONED_LOGGERS = ("asyncio", "tornado.application")


def quiet_abandoned_gathers() -> None:
    """Install :class:`_AbandonedGatherFilter` on the loggers Dask's Ctrl-C leftovers reach (idempotent)."""
    for name in _ABANDONED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _AbandonedGatherFilter) for f in logger.filters):
            logger.addFilter(_AbandonedGatherFilter())
