"""A bundled example worker, used by the demo and the tests: ``snakeden.examples``.

Serve it with ``python -m snakeden.worker snakeden.examples`` (a pool does that for you).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import signal
import sys
import time
from typing import Any

from snakeden import command


@command
def echo(value: Any) -> Any:
    """Return the argument unchanged."""
    return value


@command
def add(a: Any, b: Any) -> Any:
    return a + b


@command
async def async_add(a: Any, b: Any) -> Any:
    await asyncio.sleep(0)
    return a + b


@command
def pid() -> int:
    return os.getpid()


@command
def work(n: int) -> str:
    """A little real CPU work: ``n`` rounds of SHA-256."""
    digest = b"snakeden"
    for _ in range(n):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@command
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@command
def sleep(seconds: float) -> float:
    """Sleep in Python (interruptible by signals only)."""
    time.sleep(seconds)
    return seconds


@command
def hang_in_c(seconds: float = 3600.0) -> None:
    """Block inside C code (libc ``sleep``), where no Python-level interruption reaches."""
    libc = ctypes.CDLL(None)
    libc.sleep(int(seconds))


@command
def crash(how: str = "segfault") -> None:
    """Die the way native code dies: ``segfault``, ``abort``, ``os_exit``, ``kill``. (``exit``
    is ``sys.exit(3)``, which fails only the call: the worker keeps serving.)"""
    sys.stdout.flush()
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "abort":
        os.abort()
    elif how == "exit":
        sys.exit(3)
    elif how == "os_exit":
        os._exit(7)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(f"unknown crash kind {how!r}")


@command
def shout(lines: int = 1, stream: str = "stdout") -> int:
    """Print ``lines`` lines to stdout or stderr (and via fd 1 directly, as C code would)."""
    out = sys.stderr if stream == "stderr" else sys.stdout
    for i in range(lines):
        print(f"line {i} from pid {os.getpid()}", file=out)
    os.write(1, b"raw write to fd 1\n")
    return lines


@command
def spawn_child(seconds: float = 3600.0) -> int:
    """Start a grandchild process (in this worker's process group) and return its pid."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    return child.pid


class Counter:
    """A stateful worker: ``snakeden.examples:Counter``; set-up runs once per worker."""

    def setup(self) -> None:
        self.count = 0
        self.ready_pid = os.getpid()

    @command
    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count

    @command
    def whoami(self) -> int:
        return self.ready_pid


@command
def work_bytes(n: int) -> bytes:
    """Return ``n`` bytes (for frame-size tests)."""
    return b"z" * n
