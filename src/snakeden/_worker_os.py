"""Process-level helpers of the worker runtime: writing frames whole, dying with the parent,
the process settings every worker wants, and the host's import path."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import os
import signal
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1
EXIT_STARTUP_FAILED = 3
EXIT_PROTOCOL_ERROR = 4


def write_all(fd: int, header: bytes, body: bytes | memoryview = b"") -> None:
    """Write header and body with as few syscalls (and copies) as the kernel allows."""
    if len(body) < 65536:
        data = header + body
        n = os.write(fd, data)  # all of it, unless the host is not reading
        if n < len(data):
            view = memoryview(data)[n:]
            while view:
                view = view[os.write(fd, view) :]
        return
    views = [memoryview(header), memoryview(body)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


#: libc's prctl, looked up once: a fork template does it, and its workers inherit it instead of
#: each loading libc again (some 30 copy-on-write page faults on their way to the HELLO).
_prctl: Any = None


def die_with_parent(expected_parent: int | None) -> None:
    """Ask Linux to SIGKILL us when our parent dies, then close the race where it already has."""
    global _prctl
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            if _prctl is None:
                _prctl = ctypes.CDLL(None, use_errno=True).prctl
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(EXIT_STARTUP_FAILED)


def enlarge_pipe(fd: int, size: int = 1 << 20) -> None:
    """Grow a pipe's buffer (Linux F_SETPIPE_SZ); large frames then need fewer wake-ups."""
    if sys.platform.startswith("linux"):
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, 1031, size)


def adopt_host_path() -> None:
    """Put the host's import path (``SNAKEDEN_SYS_PATH``, see ``_process.host_import_path``)
    in front of ours, so a module the host imports from its script's directory imports here too,
    whatever our cwd. Our own entries (cwd, ``PYTHONPATH``) keep their order after it."""
    raw = os.environ.pop("SNAKEDEN_SYS_PATH", "")
    try:
        entries = json.loads(raw) if raw else []
    except ValueError:
        return
    if isinstance(entries, list):
        sys.path[:0] = [p for p in entries if isinstance(p, str) and p not in sys.path]


def prepare_process() -> None:
    """Process-wide settings every worker wants, spawned or forked."""
    faulthandler.enable()  # a segfault leaves a Python traceback in the last stderr lines
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # The host owns interruption: it stops us with SHUTDOWN, SIGTERM or SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
