"""A worker module that serves several calls at once (``snakeden.concurrency``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import snakeden

N = int(os.environ.get("SNAKEDEN_TEST_CONCURRENCY", "4"))
snakeden.concurrency(N)

_barrier = threading.Barrier(N)
_abarrier: asyncio.Barrier | None = None
_inside = 0
_most = 0
_lock = threading.Lock()


@snakeden.command
def meet(timeout: float = 60.0) -> int:
    """Returns once N calls are inside at the same time (a rendezvous, not a race)."""
    global _inside, _most
    with _lock:
        _inside += 1
        _most = max(_most, _inside)
    try:
        return _barrier.wait(timeout)
    finally:
        with _lock:
            _inside -= 1


@snakeden.command
async def ameet(timeout: float = 60.0) -> int:
    global _abarrier
    if _abarrier is None:
        _abarrier = asyncio.Barrier(N)
    async with asyncio.timeout(timeout):
        return await _abarrier.wait()


@snakeden.command
def most() -> int:
    return _most


@snakeden.command
def pid() -> int:
    return os.getpid()


@snakeden.command
def echo(x: Any) -> Any:
    return x


@snakeden.command
def crash() -> None:
    os._exit(7)


@snakeden.command
def slow_poll(path: str | None = None) -> str:
    ctx = snakeden.context()
    if path:
        with open(path, "w") as f:  # a fifo the test waits on (tests/rendezvous.py)
            f.write("x")
    while not ctx.cancelled:
        time.sleep(0.01)  # the workload: waits for the host's CANCEL
    return "stopped"


@snakeden.command
def count(n: int) -> Iterator[int]:
    yield from range(n)


@snakeden.command
async def acount(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@snakeden.command
def ask(name: str, *args: Any) -> Any:
    return snakeden.context().call_host(name, *args)


@snakeden.command
async def aask(name: str, *args: Any) -> Any:
    return await snakeden.context().acall_host(name, *args)
