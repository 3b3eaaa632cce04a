"""Plain, picklable module-level functions the peer pools run (and the snakeden commands mirror).

Keep this module light: it is imported in every peer worker. Nothing here imports snakeden's core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
import sys
import time
from typing import Any

_libc: ctypes.CDLL | None = None


def echo(x: Any) -> Any:
    """Return the argument: the trivial call and the payload echo."""
    return x


def noop() -> None:
    """Do nothing."""


def pid() -> int:
    """The worker's process id."""
    return os.getpid()


def pid_hold(seconds: float) -> int:
    """Sleep ``seconds`` (so concurrent calls spread over workers), then return the pid."""
    time.sleep(seconds)
    return os.getpid()


def loaded_hold(seconds: float, names: list[str]) -> list[Any]:
    """Like :func:`pid_hold`, and also which of the modules ``names`` this worker lacks:
    ``[pid, [missing...]]``. Proves the start-up imports really happened in the worker."""
    time.sleep(seconds)
    return [os.getpid(), [name for name in names if name not in sys.modules]]


def announce_and_sleep(path: str, seconds: float) -> int:
    """Write this worker's pid to ``path`` (atomically), then sleep: the call to SIGKILL."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return os.getpid()


def sleep_c(seconds: int) -> int:
    """Hang in C code: libc ``sleep()`` through ctypes (no Python bytecode runs meanwhile)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _libc.sleep(int(seconds))
    return os.getpid()


def import_modules(*names: str) -> None:
    """Worker initializer: import ``names`` (numpy, the CPU-burning module, ...)."""
    for name in names:
        importlib.import_module(name)


class EchoActor:
    """The Ray actor class (wrapped with ``ray.remote`` at run time)."""

    def echo(self, x: Any) -> Any:
        return x

    def noop(self) -> None:
        return None

    def pid(self) -> int:
        return os.getpid()

    def pid_hold(self, seconds: float) -> int:
        return pid_hold(seconds)
