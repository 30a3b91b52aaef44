"""Log files in the dataset directory: one per process (``OUT/logs/driver-…``, ``OUT/logs/worker-…``)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

LOG_DIR = "logs"
FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
_attached: dict[str, logging.Handler] = {}


def attach_log_file(out: Path, role: str) -> Path:
    """Send this process's ``simaq_factory`` log records (INFO and above) to a file in ``out``.

    Idempotent per (process, file); returns the file's path.
    """
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
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)  # console handlers keep their own (CLI-chosen) level
    _attached[key] = handler
    return path


def detach_log_file(path: Path) -> None:
    handler = _attached.pop(str(path), None)
    if handler is not None:
        logging.getLogger("simaq_factory").removeHandler(handler)
        handler.close()


class _AbandonedGatherFilter(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for Dask's ``AllExit``: a wait on shard
    futures that Ctrl-C abandoned, ending once the interrupted driver releases them. Nothing is
    lost (the driver reports the interrupt itself), and the user would see a page of Dask internals."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and exc.__name__ == "AllExit" and exc.__module__.startswith("distributed"))


def quiet_abandoned_gathers() -> None:
    """Install :class:`_AbandonedGatherFilter` on the ``asyncio`` logger (idempotent)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedGatherFilter) for f in logger.filters):
        logger.addFilter(_AbandonedGatherFilter())
