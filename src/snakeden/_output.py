"""Capture of a worker's stdout and stderr: line by line into ``logging``, last lines kept.

The worker's fd 1 and fd 2 are pipes the host drains continuously, so a worker that prints (or a C
library that floods fd 2) never blocks on a full pipe and never touches the frame channel.

Levels: a stdout line is logged at INFO and a plain stderr line at WARNING, on ``snakeden.worker``.
A stderr line in the marked form of :func:`log_line` is a ``logging`` record of the worker
(the Python runtime writes its records so; a worker in another language may too): it is logged
at the record's own level on ``snakeden.worker.<the worker's logger name>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence

logger = logging.getLogger("snakeden.worker")

_CHUNK = 65536
_MAX_LINE = 64 * 1024  # longer "lines" (binary floods) are cut so memory stays bounded


# Record separator, "snakeden-log", unit separator, then a JSON array [levelno, logger, message]:
# JSON keeps a multi-line message (a traceback) on one line.
LOG_MARK = "\x1esnakeden-log\x1f"


def log_line(levelno: int, name: str, message: str) -> str:
    """One ``logging`` record as a marked stderr line (no newline in it)."""
    return LOG_MARK + json.dumps([levelno, name, message], ensure_ascii=False)


def parse_log_line(line: str) -> tuple[int, str, str] | None:
    """``(levelno, logger name, message)`` of a marked line; ``None`` for any other line (also
    for a marked one that was cut or garbled, which is then logged as plain stderr)."""
    if not line.startswith(LOG_MARK):
        return None
    try:
        levelno, name, message = json.loads(line[len(LOG_MARK) :])
    except (ValueError, TypeError):
        return None
    if not isinstance(levelno, int) or not isinstance(name, str) or not isinstance(message, str):
        return None
    return levelno, name, message


def tail_text(lines: Sequence[str]) -> str:
    """What an error about a dead or failed process appends: its last stderr lines, if any."""
    return ("\nlast stderr lines:\n  " + "\n  ".join(lines)) if lines else ""


def read_nonblocking(read: Callable[[], bytes]) -> bytes | None:
    """``read()`` from a non-blocking fd or socket: ``None`` when nothing is there yet, ``b""``
    at end of file, and ``b""`` too on an error, since the writer is as gone as at the end."""
    try:
        return read()
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


class OutputTail:
    """Reads one stream of one worker; logs each line tagged with worker id and pid."""

    def __init__(self, stream: str, worker_id: str, pid: int, keep: int = 40) -> None:
        self.stream = stream
        self.worker_id = worker_id
        self.pid = pid
        self.lines: deque[str] = deque(maxlen=keep)
        self.level = logging.WARNING if stream == "stderr" else logging.INFO
        self._partial = b""
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._loop = loop
        loop.add_reader(fd, self._read_chunk)

    def _read_chunk(self) -> bool:
        """Read and log one chunk; False when there was none (yet, or any more)."""
        fd = self._fd
        assert fd is not None
        data = read_nonblocking(lambda: os.read(fd, _CHUNK))
        if data is None:
            return False
        if not data:
            self.detach()
            return False
        self.feed(data)
        return True

    def feed(self, data: bytes) -> None:
        chunk = self._partial + data
        *complete, self._partial = chunk.split(b"\n")
        if len(self._partial) > _MAX_LINE:
            complete.append(self._partial)
            self._partial = b""
        for raw in complete:
            self._emit(raw)

    def _emit(self, raw: bytes) -> None:
        line = raw[:_MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        record = parse_log_line(line) if self.stream == "stderr" else None
        if record is not None:
            self._relog(*record)
            return
        self.lines.append(line)
        if logger.isEnabledFor(self.level):
            logger.log(
                self.level,
                "[%s pid %d %s] %s",
                self.worker_id,
                self.pid,
                self.stream,
                line,
                extra={"worker_id": self.worker_id, "worker_pid": self.pid, "stream": self.stream},
            )

    def _relog(self, levelno: int, name: str, message: str) -> None:
        first, *rest = message.split("\n") or [""]
        self.lines.append(f"{logging.getLevelName(levelno)}:{name}:{first}")
        self.lines.extend(rest)  # a traceback's lines belong in a crash report's tail too
        target = logging.getLogger(f"snakeden.worker.{name}")
        if target.isEnabledFor(levelno):
            target.log(
                levelno,
                "[%s pid %d] %s",
                self.worker_id,
                self.pid,
                message,
                extra={
                    "worker_id": self.worker_id,
                    "worker_pid": self.pid,
                    "stream": "log",
                    "worker_logger": name,
                },
            )

    def last(self, n: int) -> list[str]:
        """The last ``n`` lines kept."""
        return list(self.lines)[-n:]

    def drain(self) -> None:
        """Read whatever is left right now (used before building a crash report)."""
        while self._fd is not None and self._read_chunk():
            pass

    def detach(self) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._loop = None
        self._fd = None
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
