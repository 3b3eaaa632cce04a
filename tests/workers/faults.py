"""Fault injection: do ``kind`` of harm, from wherever this is called in a worker."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

import snakeden

FAULTS = ("exception", "sys_exit", "os_exit", "segfault", "sigkill", "hang")


def explode(kind: str) -> Any:
    if kind == "exception":
        raise RuntimeError("injected fault")
    if kind == "sys_exit":
        sys.exit(5)
    if kind == "os_exit":
        os._exit(7)
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        ctypes.CDLL(None).sleep(3600)
    raise AssertionError(kind)


class Bomb:
    """Goes off when unpickled (in the worker: decoding the call) or pickled (encoding a result)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        if os.environ.get("SNAKEDEN_WORKER_ID") and self.kind:
            # Pickling in the worker means encoding the result: explode now.
            explode(self.kind)
        return (explode, (self.kind,))


@snakeden.command
def run_fault(kind: str) -> None:
    explode(kind)


@snakeden.command
def result_fault(kind: str) -> Bomb:
    return Bomb(kind)


@snakeden.command
def take(arg: Any) -> str:
    return type(arg).__name__


@snakeden.command
def echo(x: Any) -> Any:
    return x


@snakeden.command
def block(path: str, seconds: float = 3600) -> None:
    """Create ``path`` (the test waits for it: the call is running) and then block."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)  # the workload itself (a long call), not a synchronisation


@snakeden.command
def block_until(path: str, release: str) -> None:
    """Create ``path`` (the call is running), then block until the test writes to the FIFO
    ``release``: the call ends exactly when the test says."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    with open(release) as f:
        f.read(1)


@snakeden.command
def exit_when_told(path: str, release: str) -> None:
    """Create ``path`` (the call is running), then end the worker's process abruptly once the
    test writes to the FIFO ``release``."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    with open(release) as f:
        f.read(1)
    os._exit(3)


@snakeden.command
def record(path: str, token: str) -> str:
    """Append ``token`` to ``path``: a record that the call was executed."""
    with open(path, "a") as f:
        f.write(token + "\n")
    return token


@snakeden.command
def getpid() -> int:
    return os.getpid()


@snakeden.command
def garbage(kind: str) -> None:
    """Write bytes that are not a valid reply onto this worker's own channel, then carry on."""
    wfd = int(os.environ["SNAKEDEN_FDS"].split(",")[1])
    if kind == "short":
        os.write(wfd, b"\x00\x00\x00\x01Z")  # a length shorter than any header
    elif kind == "oversized":
        os.write(wfd, b"\x7f\xff\xff\xff")  # announces a 2 GiB frame
    time.sleep(3600)  # the host must not wait for a reply that will never be valid


@snakeden.command
def huge_error(n: int) -> None:
    raise ValueError("x" * n)


@snakeden.command
def garbage_when_told(go: str, done: str) -> None:
    """Answer now; later, while idle, write garbage on the channel once ``go`` (a FIFO) is
    written, then write ``done`` (a FIFO the test waits on)."""
    wfd = int(os.environ["SNAKEDEN_FDS"].split(",")[1])

    def later() -> None:
        with open(go) as f:
            f.read(1)
        os.write(wfd, b"\x7f\xff\xff\xff")
        with open(done, "w") as f:
            f.write("written")

    threading.Thread(target=later, daemon=True).start()


@snakeden.command
def record_and_release(path: str, token: str, release: str) -> int:
    """Append ``token`` to ``path`` (a record that the call ran), then write to the FIFO
    ``release``, ending the ``block_until`` call reading it. Returns this worker's pid."""
    with open(path, "a") as f:
        f.write(token + "\n")
    with open(release, "w") as f:
        f.write("x")
    return os.getpid()


@snakeden.command
def garbage_when_released(path: str, release: str) -> None:
    """Create ``path`` (the call is running), wait until the test writes to the FIFO
    ``release``, then write a frame header announcing 2 GiB on this worker's own channel and
    carry on (the host must kill it rather than wait)."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    with open(release) as f:
        f.read(1)
    os.write(int(os.environ["SNAKEDEN_FDS"].split(",")[1]), b"\x7f\xff\xff\xff")
    time.sleep(3600)  # the workload itself (stuck after the garbage), not a synchronisation
