"""Watching the processes a chaos storm harms: lifecycle events, kernel states, exits, leftovers.

The storms (:mod:`._chaos`) and the race tests wait on what this module observes, never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import platform
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Literal

import psutil

import snakeden

WORKER = "snakeden._bench.chaos_worker"
MIB = 1024 * 1024
#: close() takes a fraction of a second; past this it is taken to hang (a leaked lease).
CLOSE_BOUND = 10.0

Front = Literal["async", "sync", "submit"]


async def pace(seconds: float) -> None:
    """Space out the load generator's own actions. Never a way to wait for something."""
    await asyncio.sleep(seconds)


# --- lifecycle events ---------------------------------------------------------------------------


class EventLog:
    """Every lifecycle event of a pool (its ``on_event``), waitable from any thread."""

    def __init__(self) -> None:
        self.events: list[snakeden.WorkerEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: snakeden.WorkerEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def snapshot(self) -> list[snakeden.WorkerEvent]:
        with self._cond:
            return list(self.events)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.snapshot() if e.kind == kind)

    def pids(self, *kinds: str) -> set[int]:
        return {e.pid for e in self.snapshot() if e.kind in kinds and e.pid is not None}

    def wait_for(
        self, predicate: Callable[[list[snakeden.WorkerEvent]], bool], timeout: float
    ) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.events), timeout)

    async def wait_for_async(
        self, predicate: Callable[[list[snakeden.WorkerEvent]], bool], timeout: float
    ) -> bool:
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    def wait_count(self, kind: str, n: int, timeout: float) -> Awaitable[bool]:
        return self.wait_for_async(lambda evs: sum(e.kind == kind for e in evs) >= n, timeout)


# --- processes ----------------------------------------------------------------------------------

# read(2), readv(2), pread64(2), preadv(2): where a worker waiting for its next call sits.
_READ_SYSCALLS = {"x86_64": {0, 19, 17, 295}, "aarch64": {63, 65, 67, 69}}


def worker_state(pid: int) -> str:
    """``"idle"`` if the process is blocked reading a pipe that holds nothing (a worker waiting
    for a call nobody sent), ``"busy"`` if it is doing anything else, ``"?"`` if unknown.

    Only exact while nothing can write to that pipe meanwhile: the asyncio front's event loop is
    blocked by whoever asks (see :class:`Killer`)."""
    nrs = _READ_SYSCALLS.get(platform.machine())
    if nrs is None:
        return "?"
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return "?"
    if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) not in nrs:
        return "busy"  # running, or in another system call (sleeping in a command, say)
    try:
        fd = os.open(f"/proc/{pid}/fd/{int(fields[1], 16)}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return "?"
    try:
        pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return "?"
    finally:
        os.close(fd)
    return "idle" if pending == 0 else "busy"


def wait_exit(pid: int, timeout: float, *, reaped: bool = False) -> bool:
    """Block until process ``pid`` has exited (with ``reaped``: and its parent reaped it).
    True if it did within ``timeout``."""
    if reaped:
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            return False
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_processes(run_tag: str) -> list[psutil.Process]:
    """Live processes a pool with ``run_tag`` started, wherever they were reparented."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get("SNAKEDEN_RUN_TAG") == run_tag:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def leftovers(run_tag: str, timeout: float = 15.0) -> list[int]:
    """Processes of ``run_tag`` still alive after waiting up to ``timeout`` for their exits."""
    _, left = psutil.wait_procs(run_processes(run_tag), timeout=timeout)
    return [p.pid for p in left if alive(p.pid)]


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """``n`` processes spinning on a CPU each, for as long as the block runs."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


class Barrier:
    """Hold ``n`` workers at once with the ``hold`` command: each writes its pid to a FIFO (this
    reads them) and waits for a byte on another (``release`` writes them)."""

    def __init__(self, directory: str) -> None:
        self.announce = str(Path(directory, "announce"))
        self.gate = str(Path(directory, "gate"))
        os.mkfifo(self.announce)
        os.mkfifo(self.gate)
        self._read = os.open(self.announce, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO from reporting end-of-file between two announcements.
        self._keep = os.open(self.announce, os.O_WRONLY | os.O_NONBLOCK)
        self._gate = os.open(self.gate, os.O_RDWR)  # a reader and writer: opens never block
        self._buf = b""

    def wait(self, n: int, timeout: float) -> list[int]:
        """The pids of the first ``n`` holders; fewer if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        while self._buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                break
            with contextlib.suppress(BlockingIOError):
                self._buf += os.read(self._read, 4096)
        return [int(x) for x in self._buf.split()[:n]]

    def release(self, n: int) -> None:
        os.write(self._gate, b"x" * n)

    def close(self) -> None:
        for fd in (self._read, self._keep, self._gate):
            os.close(fd)


# --- the two fronts, driven alike ---------------------------------------------------------------
