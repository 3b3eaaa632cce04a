"""The worker module of the chaos storms (``snakeden bench --soak`` and ``tests/chaos``).

Every command that does work returns ``[pid, ...]``, so the storm knows which worker ran a call.
Faults are real: a hang in C, ``os._exit``, a SIGKILL of itself, memory held, garbage written
onto the worker's own reply channel.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any

import snakeden

_held: list[bytes] = []
_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _note(path: str, text: str) -> None:
    """Append one line to ``path`` in a single write (O_APPEND: lines never interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


@snakeden.command
def echo(x: Any) -> Any:
    return x


@snakeden.command
def getpid() -> int:
    return os.getpid()


@snakeden.command
def work(i: int, ms: float = 0.0) -> list[int]:
    """A normal call: ``ms`` milliseconds of work (sleeping; the workload itself), then
    ``[pid, i]``."""
    if ms > 0:
        time.sleep(ms / 1000.0)
    return [os.getpid(), i]


@snakeden.command
def hang(log: str, token: str) -> None:
    """Note ``token pid start`` in ``log`` (the start time on the system-wide monotonic clock),
    then hang in C: no Python bytecode runs again, only a kill ends this."""
    _note(log, f"{token} {os.getpid()} {time.monotonic():.6f}")
    while True:
        _c().pause()


@snakeden.command
def crash(how: str) -> None:
    """Die mid-call: ``os_exit`` (code 7), ``sigkill`` (its own SIGKILL) or ``segfault``."""
    if how == "os_exit":
        os._exit(7)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segfault":
        ctypes.string_at(0)
    raise ValueError(f"unknown crash {how!r}")


@snakeden.command
def bomb(mib: int, cap_mib: int, ms: float = 0.0) -> list[int]:
    """Keep ``mib`` more MiB of touched memory alive in this worker (never more than ``cap_mib``
    in all, so a pool that fails to recycle cannot exhaust the machine); ``[pid, held MiB]``."""
    if (len(_held) + 1) * mib <= cap_mib:
        _held.append(b"\x01" * (mib << 20))
    if ms > 0:
        time.sleep(ms / 1000.0)
    return [os.getpid(), len(_held) * mib]


GARBAGE = ("short", "oversized", "absurd", "noise")


@snakeden.command
def garbage(kind: str) -> None:
    """Write bytes that can never be a valid reply onto this worker's own channel, then hang:
    the host must see the violation itself and not wait for a reply."""
    wfd = int(os.environ["SNAKEDEN_FDS"].split(",")[1])
    if kind == "short":
        data = b"\x00\x00\x00\x01Z"  # a length shorter than any header
    elif kind == "oversized":
        data = b"\x7f\xff\xff\xff"  # announces a 2 GiB frame
    elif kind == "absurd":
        data = b"\xff\xff\xff\xff" + os.urandom(60)  # 4 GiB, and noise behind it
    elif kind == "noise":
        data = b"\xfe" + os.urandom(255)  # any length this prefix gives is over the limit
    else:
        raise ValueError(f"unknown garbage {kind!r}")
    os.write(wfd, data)
    while True:
        _c().pause()


@snakeden.command
def grandchild(seconds: float = 3600.0) -> list[int]:
    """Start a grandchild process (in this worker's process group); ``[pid, grandchild pid]``."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({seconds})"],
        stdin=subprocess.DEVNULL,
    )
    return [os.getpid(), child.pid]


@snakeden.command
def hold(announce: str, gate: str) -> int:
    """Write this worker's pid to the FIFO ``announce``, then wait for one byte on the FIFO
    ``gate``: the storm holds every worker at once this way (a barrier), without a sleep."""
    _note(announce, str(os.getpid()))
    fd = os.open(gate, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return os.getpid()


@snakeden.command
def fds() -> list[int]:
    """This worker's channel fds ``[read, write]``."""
    return [int(x) for x in os.environ["SNAKEDEN_FDS"].split(",")]


def _die_in(seconds: float) -> None:
    """SIGALRM (default action: terminate) in ``seconds``, whatever this worker is doing then."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, seconds)


@snakeden.command
def work_then_die(i: int, ms: float) -> list[int]:
    """Answer at once, then die ``ms`` milliseconds later, while idle: a worker killed between
    two calls (the OOM killer, a crash in a C library's background thread)."""
    _die_in(ms / 1000.0)
    return [os.getpid(), i]


DIE_AFTER_HELLO_ENV = "SNAKEDEN_CHAOS_DIE_AFTER_HELLO"


class DiesAfterHello:
    """``snakeden._bench.chaos_worker:DiesAfterHello``: while the file named by
    ``SNAKEDEN_CHAOS_DIE_AFTER_HELLO`` exists, the one worker whose set-up takes it (renames it
    to ``<flag>.<pid>``) says HELLO and dies 100 ms later (lost right after its handshake)."""

    def setup(self) -> None:
        flag = os.environ.get(DIE_AFTER_HELLO_ENV)
        if not flag:
            return
        try:
            # Atomic: exactly one worker takes the flag, and its new name says which one, so
            # a host that looks a moment later still knows.
            os.rename(flag, f"{flag}.{os.getpid()}")
        except FileNotFoundError:
            return
        _die_in(0.1)

    @snakeden.command
    def getpid(self) -> int:
        return os.getpid()

    @snakeden.command
    def echo(self, x: Any) -> Any:
        return x
