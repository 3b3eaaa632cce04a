"""The worker's ``logging``, routed to the host with each record's level (``route_logging``)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

from snakeden._output import log_line

LOG_LEVEL_ENV = "SNAKEDEN_LOG_LEVEL"


class _HostLogHandler(logging.Handler):
    """Writes each record to stderr as one marked line that the host re-logs at the record's
    level (``_output.log_line``), instead of plain text the host could only log as WARNING."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = log_line(record.levelno, record.name, self.format(record))
            self.stream.write(line + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)


def route_logging() -> None:
    """Send the worker's ``logging`` records to the host with their levels.

    Runs after the module's import and set-up, so it sees their configuration: a root handler
    writing to stderr (``logging.basicConfig()``) is swapped for the marked one, keeping its
    level and filters; a root logger nobody configured gets the marked handler and the level the
    host keeps for ``snakeden.worker`` (``SNAKEDEN_LOG_LEVEL``). Other handlers (files, sockets)
    are the module's business and stay.
    """
    root = logging.getLogger()
    if any(isinstance(h, _HostLogHandler) for h in root.handlers):
        return  # routed already: never twice, or each record would reach the host twice
    if not root.handlers:
        root.addHandler(_HostLogHandler(sys.stderr))
        with contextlib.suppress(ValueError):
            level = int(os.environ.get(LOG_LEVEL_ENV, logging.WARNING))
            if level != root.level:  # setLevel clears every logger's cache: pages to copy
                root.setLevel(level)
        return
    for handler in list(root.handlers):
        if (
            type(handler) is logging.StreamHandler
            and handler.stream is not None
            and handler.stream in (sys.stderr, sys.__stderr__)
        ):
            marked = _HostLogHandler(handler.stream)
            marked.setLevel(handler.level)
            for f in handler.filters:
                marked.addFilter(f)
            root.removeHandler(handler)
            root.addHandler(marked)
