"""The snakeden worker module of the benchmark: the same commands as :mod:`peer_tasks`.

Imported in every snakeden worker (``Pool("snakeden._bench.workers", ...)``), never in the harness.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import snakeden
from snakeden._bench import peer_tasks as _tasks


@snakeden.command
def echo(x: Any) -> Any:
    return x


@snakeden.command
def count(n: int) -> Iterator[int]:
    yield from range(n)


@snakeden.command
def noop() -> None:
    return None


@snakeden.command
def pid() -> int:
    return os.getpid()


@snakeden.command
def pid_hold(seconds: float) -> int:
    return _tasks.pid_hold(seconds)


@snakeden.command
def loaded_hold(seconds: float, names: list[str]) -> list[Any]:
    return _tasks.loaded_hold(seconds, names)


@snakeden.command
def announce_and_sleep(path: str, seconds: float) -> int:
    return _tasks.announce_and_sleep(path, seconds)


@snakeden.command
def sleep_c(seconds: int) -> int:
    return _tasks.sleep_c(seconds)
