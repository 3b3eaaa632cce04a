"""Commands for ``tests/test_worker_fuzz.py``: safe to call with whatever arguments random frames
carry (nothing here blocks, touches files or allocates without bound)."""

from __future__ import annotations

from typing import Any

import snakeden


@snakeden.command
def echo(x: Any) -> Any:
    return x


@snakeden.command
async def aecho(x: Any) -> Any:
    return x


@snakeden.command
def kw(*, a: Any = None) -> Any:
    return a


@snakeden.command
def fail(message: Any) -> None:
    raise RuntimeError(message)


@snakeden.command
def sized(n: int) -> bytes:
    # Bounded so that a random argument cannot make the worker allocate gigabytes.
    return b"x" * max(0, min(int(n), 1 << 16))


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("this exception cannot be shown")


@snakeden.command
def fail_unprintable() -> None:
    raise Unprintable


class Unsendable:
    def __reduce__(self) -> Any:
        raise Unprintable


@snakeden.command
def unsendable() -> Unsendable:
    return Unsendable()
