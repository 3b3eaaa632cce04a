"""Process-level helpers of the worker runtime: writing frames whole, dying with the parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
EXIT_STARTUP_FAILED = 3
EXIT_PROTOCOL_ERROR = 4


def write_all(fd: int, header: bytes, body: bytes | memoryview = b"") -> None:
    """Write header and body with as few syscalls (and copies) as the kernel allows."""
    if len(body) < 65536:
        data = memoryview(header + bytes(body))
        while data:
            data = data[os.write(fd, data) :]
        return
    views = [memoryview(header), memoryview(body)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def die_with_parent(expected_parent: int | None) -> None:
    """Ask Linux to SIGKILL us when our parent dies, then close the race where it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(EXIT_STARTUP_FAILED)


def enlarge_pipe(fd: int, size: int = 1 << 20) -> None:
    """Grow a pipe's buffer (Linux F_SETPIPE_SZ); large frames then need fewer wake-ups."""
    if sys.platform.startswith("linux"):
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, 1031, size)
