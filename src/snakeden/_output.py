"""Capture of a worker's stdout and stderr: line by line into ``logging``, last lines kept.

The worker's fd 1 and fd 2 are pipes the host drains continuously, so a worker that prints (or a C
library that floods fd 2) never blocks on a full pipe and never touches the frame channel.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque

logger = logging.getLogger("snakeden.worker")

_CHUNK = 65536
_MAX_LINE = 64 * 1024  # longer "lines" (binary floods) are cut so memory stays bounded


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
        loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.detach()
            return
        self.feed(data)

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

    def drain(self) -> None:
        """Read whatever is left right now (used before building a crash report)."""
        if self._fd is None:
            return
        while True:
            try:
                data = os.read(self._fd, _CHUNK)
            except (BlockingIOError, InterruptedError, OSError):
                return
            if not data:
                self.detach()
                return
            self.feed(data)

    def detach(self) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._loop = None
        self._fd = None
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
