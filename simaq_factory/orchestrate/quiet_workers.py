"""Dask preload for the worker processes of a build's LocalCluster: Ctrl-C ends them quietly.

A terminal's Ctrl-C reaches every process of the foreground process group. Python's default
handler made each LocalCluster worker raise ``KeyboardInterrupt`` and print a page of tracebacks
(``Process Dask Worker process (from Nanny): ...``) above the driver's one-line
``error: interrupted; run the same command again to resume``; ignoring the signal instead kept a
busy worker alive until its shard finished (the nanny killed it after 4 s). A worker now exits at
once, as after a kill: the shard it was writing has no provenance record yet, so a resume redoes it
(the shard task removes a shard's files before writing them). The driver owns the interruption.
"""

from __future__ import annotations

import os
import signal
import threading


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(128 + signum)  # no traceback, no wait for the task thread


if threading.current_thread() is threading.main_thread():  # where distributed imports a preload
    signal.signal(signal.SIGINT, _exit_quietly)
