"""A worker module for stream, cancellation and host-call tests (one call at a time)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import snakeden


def _tell(path: str | None, what: str) -> None:
    if path:
        with open(path, "w") as f:  # a fifo the test waits on (tests/rendezvous.py)
            f.write(what)


@snakeden.command
def count(n: int) -> Iterator[int]:
    yield from range(n)


@snakeden.command
async def acount(n: int) -> AsyncIterator[int]:
    for i in range(n):
        if i % 100 == 0:
            await asyncio.sleep(0)  # let the loop read CANCEL/CREDIT between items
        yield i


@snakeden.command
def fail_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"failed after {n}")


@snakeden.command
def endless(path: str | None = None) -> Iterator[int]:
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        _tell(path, f"closed after {i}")


@snakeden.command
async def aendless(path: str | None = None) -> AsyncIterator[int]:
    i = 0
    try:
        while True:
            yield i
            i += 1
            await asyncio.sleep(0)
    finally:
        _tell(path, f"closed after {i}")


@snakeden.command
def zeros(n: int, size: int) -> Iterator[bytes]:
    for _ in range(n):
        yield bytes(size)


@snakeden.command
def not_a_generator() -> int:
    return 1


@snakeden.command
def pid() -> int:
    return os.getpid()


@snakeden.command
def echo(x: Any) -> Any:
    return x


@snakeden.command
def poll_cancel(path: str) -> str:
    """A sync command that stops when the host cancels it."""
    ctx = snakeden.context()
    _tell(path, "running")
    while not ctx.cancelled:
        time.sleep(0.01)  # the workload: a long job checking for cancellation between steps
    return "stopped"


@snakeden.command
def check_cancel(path: str, done: str) -> None:
    ctx = snakeden.context()
    _tell(path, "running")
    try:
        while True:
            time.sleep(0.01)  # the workload
            ctx.check_cancelled()
    except snakeden.CallCancelled:
        _tell(done, "cancelled")
        raise


@snakeden.command
async def await_forever(path: str, done: str) -> None:
    _tell(path, "running")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        _tell(done, "cancelled")
        raise


@snakeden.command
def ignore_cancel(path: str) -> None:
    _tell(path, "running")
    while True:
        time.sleep(0.05)  # the workload: a command that never looks at cancellation


@snakeden.command
def ask(name: str, *args: Any, **kwargs: Any) -> Any:
    return snakeden.context().call_host(name, *args, **kwargs)


@snakeden.command
async def aask(name: str, *args: Any) -> Any:
    return await snakeden.context().acall_host(name, *args)


@snakeden.command
def ask_catching(name: str, *args: Any) -> str:
    try:
        snakeden.context().call_host(name, *args)
    except KeyError as exc:
        return f"KeyError {exc.args[0]}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@snakeden.command
def progress(n: int) -> Iterator[int]:
    """A stream that reports to the host as it goes."""
    ctx = snakeden.context()
    for i in range(n):
        ctx.call_host("seen", i)
        yield i


@snakeden.command
def whoami() -> list[Any]:
    ctx = snakeden.context()
    return [ctx.call_id, ctx.command, ctx.cancelled]
