"""Host functions: what worker code reaches with ``snakeden.context().call_host(name, ...)``.

The worker sends HOST_CALL ``[call id, name, args, kwargs]`` on its channel; the host runs the
function registered under ``name`` and answers HOST_REPLY ``[true, value]`` or ``[false,
error map]`` (docs/protocol.md §6.7), in the codec of the HOST_CALL. Where it runs:

* an attached channel (``Pool``; ``SyncPool`` with concurrent workers): an ``async def``
  function as a task on the pool's loop, a sync one on the loop's default executor (so it may
  block, even on the pool itself, without stalling the loop);
* a blocking channel (``SyncPool``): on the caller's thread, which is the one reading the
  channel for the call that asked (an ``async def`` function runs on the pool's loop meanwhile).

A host function may call the pool. Such a call takes a free worker slot or fails at once with
:class:`HostCallDeadlock`: it never waits in the queue, because the slot it would wait for may be
the one held by the very call waiting on this host function (one worker, one slot: it would
wait for ever).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from snakeden._channel import Channel
from snakeden._errors import HostCallDeadlock
from snakeden._protocol import (
    PICKLE,
    Frame,
    Kind,
    decode_body,
    encode_body,
    encode_frame,
    error_body,
)
from snakeden._worker_bodies import _constructor_args, _fits

_inside: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "snakeden_host_function", default=None
)


def refuse_waiting() -> None:
    """Called where a call would queue for a worker: refused inside a host function."""
    name = _inside.get()
    if name is not None:
        raise HostCallDeadlock(
            f"host function {name!r} called the pool and no worker slot was free; a call made "
            f"from a host function never waits for one (it could wait for the slot held by "
            f"the call waiting on {name!r}). Add workers or snakeden.concurrency() in the worker "
            f"module, or call the pool outside host functions"
        )


def inside() -> str | None:
    """The name of the host function the current code runs in, if any."""
    return _inside.get()


def register(table: dict[str, Callable[..., Any]], name: str, fn: Callable[..., Any]) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a host function's name is a non-empty str, not {name!r}")
    if not callable(fn):
        raise TypeError(f"host function {name!r} must be callable, not {fn!r}")
    table[name] = fn


async def as_nested(coro: Any, name: str | None) -> Any:
    """Run ``coro`` (on the loop) as if inside host function ``name`` (None: not inside)."""
    if name is not None:
        _inside.set(name)  # this task's own context
    return await coro


class HostFunctions:
    """The pool's table of host functions, and the running of HOST_CALLs against it."""

    def __init__(
        self,
        initial: Mapping[str, Callable[..., Any]] | None,
        loop: asyncio.AbstractEventLoop,
        max_frame_size: int,
    ) -> None:
        # The config's own dict (see make_config), so register() before start() counts too.
        self.table: dict[str, Callable[..., Any]] = (
            initial if isinstance(initial, dict) else dict(initial or {})
        )
        self.loop = loop
        self.max_frame_size = max_frame_size
        self._tasks: set[asyncio.Future[Any]] = set()

    def on_host_call(self, channel: Channel, frame: Frame) -> None:
        """A HOST_CALL arrived on ``channel`` (on the loop, or on the caller's thread)."""
        flags = frame.flags & PICKLE
        try:
            body = decode_body(frame)
            _call_id, name, args, kwargs = body
            if not (isinstance(name, str) and isinstance(args, list) and isinstance(kwargs, dict)):
                raise TypeError("not [call id, name, args, kwargs]")
        except Exception as exc:
            self._reply(channel, frame.id, 0, _error("decode", exc, f"bad HOST_CALL: {exc}"))
            return
        fn = self.table.get(name)
        if fn is None:
            known = ", ".join(sorted(self.table)) or "none"
            message = (
                f"no host function {name!r} is registered (registered: {known}); pass "
                f"host_functions={{...}} to the pool or call pool.register()"
            )
            self._reply(channel, frame.id, flags, _error("unknown_command", None, message))
            return
        if channel.attached:
            ctx = contextvars.copy_context()
            ctx.run(_inside.set, name)
            if inspect.iscoroutinefunction(fn):
                fut: asyncio.Future[Any] = self.loop.create_task(fn(*args, **kwargs), context=ctx)
            else:
                fut = self.loop.run_in_executor(
                    None, functools.partial(ctx.run, fn, *args, **kwargs)
                )
            self._tasks.add(fut)
            fut.add_done_callback(functools.partial(self._done, channel, frame.id, flags))
            return
        token = _inside.set(name)
        try:
            if inspect.iscoroutinefunction(fn):
                value = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop).result()
            else:
                value = fn(*args, **kwargs)
        except Exception as exc:
            self._reply(channel, frame.id, flags, _error("user", exc))
            return
        finally:
            _inside.reset(token)
        self._reply(channel, frame.id, flags, [True, value])

    def _done(self, channel: Channel, hid: int, flags: int, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        if fut.cancelled():
            self._reply(channel, hid, flags, _error("user", asyncio.CancelledError()))
            return
        exc = fut.exception()
        if exc is not None:
            self._reply(channel, hid, flags, _error("user", exc))
            return
        self._reply(channel, hid, flags, [True, fut.result()])

    def _reply(self, channel: Channel, hid: int, flags: int, body: list[Any]) -> None:
        try:
            data = encode_frame(
                Kind.HOST_REPLY, hid, encode_body(body, flags), flags, self.max_frame_size
            )
        except Exception as exc:
            what = type(body[1]).__name__
            message = f"the host function's result (a {what}) could not be sent: {exc}"
            data = encode_frame(
                Kind.HOST_REPLY, hid, encode_body(_error("encode", exc, message), flags), flags
            )
        channel.notify(data)


def _error(kind: str, exc: BaseException | None, message: str | None = None) -> list[Any]:
    """``[false, error map]`` (docs/protocol.md §7) for a host function's failure."""
    if exc is None or kind != "user":
        name = type(exc).__name__ if exc is not None else "LookupError"
        return [False, error_body(kind=kind, type_name=name, message=message or str(exc))]
    cls = type(exc)
    args = _constructor_args(exc)
    return [
        False,
        error_body(
            kind="user",
            type_name=cls.__qualname__,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            module=cls.__module__,
            qualname=cls.__qualname__,
            args=args if _fits(args, 1 << 16) else None,
        ),
    ]
