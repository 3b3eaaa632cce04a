"""Commands that keep state in their session (``snakeden.context().session``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import snakeden
from snakeden import _worker_sessions


@snakeden.command
def put(key: str, value: Any) -> int:
    state = snakeden.context().session
    assert state is not None, "called outside a session"
    state[key] = value
    return len(state)


@snakeden.command
def get(key: str, default: Any = None) -> Any:
    state = snakeden.context().session
    assert state is not None, "called outside a session"
    return state.get(key, default)


@snakeden.command
async def aput(key: str, value: Any) -> Any:
    await asyncio.sleep(0)  # an await point: the context must survive it
    state = snakeden.context().session
    assert state is not None
    state[key] = value
    return [state.id, snakeden.context().command]


@snakeden.command
def whoami() -> list[Any]:
    """[session id or None, pid, the session's keys]."""
    try:
        state = snakeden.context().session
    except LookupError:  # a call outside any session has no context (yet) in this runtime
        state = None
    return [state.id if state is not None else None, os.getpid(), sorted(state or {})]


@snakeden.command
def open_sessions() -> list[int]:
    """The ids of the sessions this worker holds."""
    return _worker_sessions.open_ids()


@snakeden.command
def hold(reached: str, release: str) -> int:
    """Say (FIFO ``reached``) that the call is running, then wait until the test writes to the
    FIFO ``release``: holds this worker busy for exactly as long as the test needs."""
    with open(reached, "w") as f:
        f.write(str(os.getpid()))
    with open(release) as f:
        f.read(1)
    return os.getpid()


@snakeden.command
def die() -> None:
    os._exit(7)


@snakeden.command
def items() -> Iterator[list[Any]]:
    """The session's keys and values, one pair per item: a stream that reads session state."""
    state = snakeden.context().session
    assert state is not None, "streamed outside a session"
    for key in sorted(state):
        yield [key, state[key]]
