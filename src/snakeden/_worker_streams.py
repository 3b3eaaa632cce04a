"""A STREAM call in the worker: a generator's items go out one frame each, paced by CREDIT.

The command is called like any other; what it returns must be a generator (or any iterator) or
an async generator. Before each item the driver waits for credit, so the command never runs
more than the host's window ahead of its reader (docs/protocol.md §6.6). The stream ends with
STREAM_END, or with one ERROR: the command raised (after the items before it), an item could not
be encoded, or the host cancelled the call (the generator is closed first, so its ``finally``
blocks run).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from snakeden._protocol import Kind, check_frame_size, encode_body, error_body
from snakeden._worker_bodies import _text
from snakeden._worker_context import CallCancelled, CallContext
from snakeden._worker_runtime import Gate

if TYPE_CHECKING:
    from collections.abc import Callable

    from snakeden.worker import _Server


def hint(result: Any, name: str) -> str | None:
    """What to say when a plain call's result is a generator (it cannot be sent as a value)."""
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return f"{name!r} is a generator: call it with pool.stream() to get its items"
    return None


class _ItemNotSent(Exception):
    pass


def run_stream(  # noqa: PLR0917 - handle_call's locals, passed on as they are
    server: _Server,
    ident: int,
    flags: int,
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
) -> None:
    link = server.link
    # The gate first, so that the CANCEL and CREDIT read with the CALL, applied when the
    # context is made, find both.
    gate = link.gates.setdefault(ident, Gate())
    ctx = link.context(ident, server.current_name, flags)
    name = ctx.command or server.current_name
    try:
        items = server._invoke(fn, args, kwargs)
    except BaseException as exc:
        server.send_error_body(ident, flags, server._exception_body(exc, flags))
        return
    try:
        if inspect.isasyncgen(items):
            link.run_async(_drive_async(server, ident, flags, items, ctx=ctx, gate=gate), ident)
        elif isinstance(items, Iterator):
            _drive(server, ident, flags, items, ctx=ctx, gate=gate)
        else:
            server.send_error(
                ident,
                flags,
                kind="bad_call",
                type_name="TypeError",
                message=(
                    f"{name!r} returned a {type(items).__name__}, not a generator: only a "
                    f"generator (or async generator) command streams; call it with pool.call()"
                ),
            )
    finally:
        link.gates.pop(ident, None)


def _drive(
    server: _Server, ident: int, flags: int, items: Iterator[Any], *, ctx: CallContext, gate: Gate
) -> None:
    link = server.link
    try:
        while True:
            if gate.credit <= 0:
                link.wait_credit(ctx, gate)
            if ctx.cancelled:
                raise CallCancelled(f"stream {ident} was cancelled by the host")
            try:
                item = next(items)
            except StopIteration:
                break
            server.send(Kind.STREAM_ITEM, ident, _encode(server, item, flags), flags)
            with gate.cond:
                gate.credit -= 1
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            close = getattr(items, "close", None)
            if close is not None:
                close()  # its finally blocks run here, in the worker, before the ERROR goes out
        _fail(server, ident, flags, exc)
        return
    server.send(Kind.STREAM_END, ident, b"", flags)


async def _drive_async(
    server: _Server, ident: int, flags: int, items: Any, *, ctx: CallContext, gate: Gate
) -> None:
    link = server.link
    agen: AsyncIterator[Any] = items
    try:
        while True:
            if gate.credit <= 0:
                await link.wait_credit_async(gate)
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                break
            server.send(Kind.STREAM_ITEM, ident, _encode(server, item, flags), flags)
            gate.credit -= 1  # CREDIT is applied on this same loop thread
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            await items.aclose()
        _fail(server, ident, flags, exc)
        return
    server.send(Kind.STREAM_END, ident, b"", flags)


def _encode(server: _Server, item: Any, flags: int) -> bytes:
    try:
        data = encode_body(item, flags)
        check_frame_size(len(data), server.max_frame_size)
    except BaseException as exc:
        raise _ItemNotSent(
            f"an item of the stream (a {type(item).__name__}) could not be sent: "
            f"{type(exc).__name__}: {_text(exc)}. Yield plain data, use serializer='pickle', "
            f"or yield less per item"
        ) from None
    return data


def _fail(server: _Server, ident: int, flags: int, exc: BaseException) -> None:
    if isinstance(exc, _ItemNotSent):
        body = error_body(kind="encode", type_name="TypeError", message=str(exc))
    else:
        body = server._exception_body(exc, flags)
    server.send_error_body(ident, flags, body)
