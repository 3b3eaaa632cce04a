"""The conformance worker contract (docs/protocol.md §11) served by the Python runtime:
``python -m snakeden.conformance -- python -m snakeden.worker snakeden.conformance.pyworker``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

from snakeden import command


@command
def echo(value: Any) -> Any:
    return value


@command
def add(a: Any, b: Any) -> Any:
    return a + b


@command
def fail(message: str) -> None:
    raise RuntimeError(message)


@command
def sleep(ms: int) -> int:
    # One call at a time: the runtime reads CANCEL only after this returns (and ignores it).
    time.sleep(ms / 1000)
    return ms


@command
def count(n: int) -> Iterator[int]:
    """Feature "stream" (docs/protocol.md §6.6): yields 0 .. n-1."""
    yield from range(n)


@command
def shout(text: str) -> str:
    print(text)
    print(text, file=sys.stderr)
    return text


@command
def blob(n: int) -> bytes:
    return bytes(n)
