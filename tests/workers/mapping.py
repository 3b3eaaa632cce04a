"""Commands for ``map`` tests: each item says what to do, and records that it ran."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import snakeden


@snakeden.command
def step(item: list[Any]) -> Any:
    """``[what, record_path, token]``: append ``token`` to ``record_path`` (the item ran), then
    return it (``"ok"``), raise (``"fail"``), die (``"crash"``) or block (``"hang"``)."""
    what, path, token = item
    with open(path, "a") as f:
        f.write(f"{token}\n")
    if what == "fail":
        raise ValueError(f"item {token} failed")
    if what == "crash":
        os._exit(9)
    if what == "hang":
        time.sleep(3600)  # the workload: a call that never ends (killed by the timeout)
    return token


@snakeden.command
def add(a: int, b: int) -> int:
    return a + b


@snakeden.command
def twice(x: Any) -> Any:
    return x * 2


@snakeden.command
async def later(x: Any) -> Any:
    await asyncio.sleep(0)  # the workload: one real await (a coroutine command, not a sync one)
    return x


@snakeden.command
def deferred(x: Any) -> Any:
    """A sync command that returns an awaitable: the map's value is what it resolves to."""
    return later(x)


@snakeden.command
def kind(x: Any) -> str:
    return type(x).__name__
