"""The worker's channel while calls run: cancellation, stream credit and host calls reach a
running call, and a worker module that declares ``snakeden.concurrency(n)`` serves n calls at once.

A worker runs one of two ways, chosen at start-up (docs/protocol.md, HELLO ``concurrency``):

* **single-call** (the default): ``worker._Server``'s blocking loop runs one call at a time on
  the main thread, exactly as it did before these features; that is the fast path. Nobody reads
  the channel while a plain call runs unless the call asks: ``ctx.cancelled`` polls it, a host
  call or a stream waiting for credit reads it until its answer comes, and an ``async def``
  command runs on the event loop with the channel watched (so CANCEL cancels its task). Frames
  read this way that are not for the running call (the next CALL, PING, SHUTDOWN) are queued for
  the serving loop, in order (``_Server.backlog``).
* **concurrent** (n > 1, :class:`Concurrent`): the main thread runs an event loop that reads the
  channel; each CALL runs the ordinary call path on one of n threads (so BATCH, trace context and
  errors behave as in the single-call runtime), and an ``async def`` command's coroutine runs on
  the loop as a task that thread waits for. Frames are written whole under one lock.

:class:`Link` is what both share: it applies CANCEL, CREDIT and HOST_REPLY to the call they are
for, and it is the ``HostLink`` a :class:`~snakeden._worker_context.CallContext` calls.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import select
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snakeden import _worker_sessions as _sessions
from snakeden._calls import error_from_body
from snakeden._protocol import (
    PICKLE,
    SESSION,
    STREAM,
    Frame,
    Kind,
    ProtocolViolation,
    check_frame_size,
    decode_body,
    encode_body,
    encode_frame,
)
from snakeden._worker_context import CallCancelled, CallContext, enter, leave
from snakeden._worker_os import EXIT_PROTOCOL_ERROR

if TYPE_CHECKING:
    from snakeden.worker import _Server


class Gate:
    """A stream's credit: how many more items the host will take (docs/protocol.md CREDIT)."""

    __slots__ = ("cond", "credit", "fut")

    def __init__(self) -> None:
        self.credit = 0
        self.cond = threading.Condition()
        self.fut: asyncio.Future[None] | None = None

    def add(self, n: int) -> None:
        with self.cond:
            self.credit += n
            self.cond.notify_all()
        self.wake_async()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self.wake_async()

    def wake_async(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)


class _Reply:
    """One host call waiting for its HOST_REPLY (``frame`` None: the host went away)."""

    __slots__ = ("done", "event", "frame", "fut")

    def __init__(self, event: threading.Event | None, fut: asyncio.Future[None] | None) -> None:
        self.frame: Frame | None = None
        self.done = False
        self.event = event
        self.fut = fut

    def set(self, frame: Frame | None) -> None:
        self.frame, self.done = frame, True
        if self.event is not None:
            self.event.set()
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)


class Link:
    """The channel as running calls see it (both runtimes)."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.calls: dict[int, CallContext] = {}  # contexts made, by call id
        self.tasks: dict[int, asyncio.Task[Any]] = {}  # async commands' tasks, by call id
        self.gates: dict[int, Gate] = {}  # running streams' credit, by call id
        self.waits: dict[int, _Reply] = {}  # host calls waiting, by host-call id
        self._ids = itertools.count(1)
        self.threaded = False  # the concurrent runtime: calls on threads, the loop reads
        self.eof = False
        # Where frames that are not for a running call go: the serving loop's queue.
        self.sink: Callable[[Frame | None], None] = server.backlog.append
        self._poller = select.poll()
        self._poller.register(server.rfd, select.POLLIN)

    # --- reading ---------------------------------------------------------------------------------

    def pump(self, block: bool) -> None:
        """Single-call runtime: read what the host sent (waiting for it if ``block``)."""
        if not block and not self._poller.poll(0):
            return
        self.on_readable()

    def on_readable(self) -> None:
        server = self.server
        try:
            n = os.readv(server.rfd, [server.buf])
        except (BlockingIOError, InterruptedError):
            return
        if n == 0:
            self.host_gone()
            return
        try:
            frames = server.decoder.feed(server.view[:n])
        except ProtocolViolation as exc:
            print(f"snakeden worker: bad frame from host: {exc}", file=sys.stderr, flush=True)
            os._exit(EXIT_PROTOCOL_ERROR)  # no resynchronising a stream that lost framing
        for frame in frames:
            self.route(frame)

    def route(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == Kind.CANCEL:
            self.cancel(frame.id)
        elif kind == Kind.CREDIT:
            gate = self.gates.get(frame.id)
            if gate is not None:
                gate.add(_credit(frame))
        elif kind == Kind.HOST_REPLY:
            reply = self.waits.pop(frame.id, None)
            if reply is not None:
                reply.set(frame)
        else:
            self.sink(frame)

    def cancel(self, ident: int) -> None:
        ctx = self.calls.get(ident)
        if ctx is not None:
            ctx.mark_cancelled()
        gate = self.gates.get(ident)
        if gate is not None:
            gate.wake()
        task = self.tasks.get(ident)
        if task is not None:
            task.cancel()

    def host_gone(self) -> None:
        """End of file: every running call is cancelled, every host call fails."""
        self.eof = True
        for ident in list(self.calls) + list(self.tasks) + list(self.gates):
            self.cancel(ident)
        waits, self.waits = self.waits, {}
        for reply in waits.values():
            reply.set(None)
        self.sink(None)

    # --- a call's context ------------------------------------------------------------------------

    def context(self, ident: int, name: str, flags: int) -> CallContext:
        """The context of call ``ident``, registered so that its CANCEL reaches it."""
        ctx = self.calls.get(ident)
        if ctx is None:
            ctx = self.calls[ident] = CallContext(ident, name, host=self, flags=flags & PICKLE)
            self.claim(ident)
        return ctx

    def gate(self, ident: int) -> Gate:
        gate = self.gates.get(ident)
        if gate is None:
            gate = self.gates[ident] = Gate()
            self.claim(ident)
        return gate

    def claim(self, ident: int) -> None:
        """Single-call runtime: apply the CANCEL and CREDIT for call ``ident`` that were read
        with it (the same read) and wait in the serving loop's queue."""
        backlog = self.server.backlog
        if self.threaded or not backlog:
            return
        mine = [f for f in backlog if f is not None and f.id == ident and f.kind in _CLAIMED]
        for frame in mine:
            backlog.remove(frame)
            self.route(frame)

    def on_loop(self) -> bool:
        loop = self.server.loop
        return loop is not None and loop.is_running() and _running_loop() is loop

    def poll(self, ctx: CallContext) -> None:
        if not self.threaded and not self.on_loop():
            self.pump(block=False)

    # --- streams ---------------------------------------------------------------------------------

    def wait_credit(self, ctx: CallContext, gate: Gate) -> None:
        """Block a sync stream until the host grants an item (or cancels the call)."""
        if self.threaded:
            with gate.cond:
                while gate.credit <= 0 and not ctx._cancelled:
                    gate.cond.wait()
            return
        while gate.credit <= 0 and not ctx._cancelled:
            self.pump(block=True)

    @staticmethod
    async def wait_credit_async(gate: Gate) -> None:
        while gate.credit <= 0:
            gate.fut = asyncio.get_running_loop().create_future()
            try:
                await gate.fut
            finally:
                gate.fut = None

    # --- async commands --------------------------------------------------------------------------

    def run_async(self, awaitable: Any, ident: int) -> Any:
        """Run an ``async def`` command's awaitable to its end, cancellable by CANCEL."""
        server = self.server
        if self.threaded:
            ctx = self.calls.get(ident)
            assert server.loop is not None
            return asyncio.run_coroutine_threadsafe(
                self._task_body(awaitable, ident, ctx), server.loop
            ).result()
        if server.loop is None:
            server.loop = asyncio.new_event_loop()
        loop = server.loop
        loop.add_reader(server.rfd, self.on_readable)
        try:
            return loop.run_until_complete(self._task_body(awaitable, ident, None))
        finally:
            loop.remove_reader(server.rfd)

    async def _task_body(self, awaitable: Any, ident: int, ctx: CallContext | None) -> Any:
        if ctx is not None:
            enter(ctx)  # the task's own copy of the context: nothing to reset
            if ctx._cancelled:
                raise asyncio.CancelledError  # cancelled before its first step
        task = asyncio.current_task()
        assert task is not None
        self.tasks[ident] = task
        try:
            return await awaitable
        finally:
            self.tasks.pop(ident, None)

    # --- host calls ------------------------------------------------------------------------------

    def _host_frame(self, ctx: CallContext, name: str, args: Any, kwargs: Any) -> tuple[int, bytes]:
        if not isinstance(name, str):
            raise TypeError(f"a host function's name is a str, not {type(name).__name__}")
        body = encode_body([ctx.call_id, name, args, kwargs], ctx._flags)
        check_frame_size(len(body), self.server.max_frame_size)
        hid = next(self._ids) % 0xFFFF_FFFF + 1
        return hid, encode_frame(Kind.HOST_CALL, hid, body, ctx._flags, self.server.max_frame_size)

    def call_host(self, ctx: CallContext, name: str, args: Any, kwargs: Any) -> Any:
        if self.on_loop():
            raise RuntimeError(
                f"ctx.call_host({name!r}) would block the worker's event loop: in an async def "
                f"command use 'await snakeden.context().acall_host(...)'"
            )
        hid, data = self._host_frame(ctx, name, args, kwargs)
        reply = _Reply(threading.Event() if self.threaded else None, None)
        self.waits[hid] = reply
        self.server.send_raw(data)
        if self.threaded:
            assert reply.event is not None
            reply.event.wait()
        else:
            while not reply.done:
                self.pump(block=True)
        return _unpack(reply, name)

    async def acall_host(self, ctx: CallContext, name: str, args: Any, kwargs: Any) -> Any:
        hid, data = self._host_frame(ctx, name, args, kwargs)
        reply = _Reply(None, asyncio.get_running_loop().create_future())
        self.waits[hid] = reply
        self.server.send_raw(data)
        try:
            assert reply.fut is not None
            await reply.fut
        finally:
            self.waits.pop(hid, None)
        return _unpack(reply, name)


def _unpack(reply: _Reply, name: str) -> Any:
    if reply.frame is None:
        raise CallCancelled(f"the host went away during host call {name!r}")
    body = decode_body(reply.frame)
    if not (isinstance(body, list) and len(body) == 2):
        raise RuntimeError(f"malformed HOST_REPLY to host call {name!r}: {body!r:.200}")
    ok, value = body
    if ok:
        return value
    if isinstance(value, dict) and value.get("kind") == "unknown_command":
        raise LookupError(value.get("message", f"no host function {name!r}"))
    raise error_from_body(value, f"host function {name!r}")


_CLAIMED = (Kind.CANCEL, Kind.CREDIT)


def _credit(frame: Frame) -> int:
    try:
        n = decode_body(frame)
    except Exception:
        return 0
    return n if type(n) is int and n > 0 else 0


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Concurrent:
    """The runtime of a worker that serves ``n`` calls at once (see the module docstring)."""

    def __init__(self, server: _Server, n: int) -> None:
        self.server = server
        self.link = server.link
        self.n = n
        self.work: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        self.running = 0
        self.closing = False
        self.done: asyncio.Future[int] | None = None

    def serve(self) -> int:
        server, link = self.server, self.link
        loop = server.loop = asyncio.new_event_loop()
        link.threaded = True
        link.sink = self.dispatch
        server.wlock = threading.Lock()
        server.threaded = True
        self.done = loop.create_future()
        for i in range(self.n):
            # Daemon threads: a command stuck in C must not keep the process alive once the
            # host is gone (the interpreter would join a ThreadPoolExecutor's threads at exit).
            threading.Thread(
                target=self._serve_calls, name=f"snakeden-call-{i}", daemon=True
            ).start()
        for frame in list(server.backlog):  # read together with earlier frames, if any
            self.dispatch(frame)
        server.backlog.clear()
        loop.add_reader(server.rfd, link.on_readable)
        try:
            return loop.run_until_complete(self.done)
        finally:
            loop.remove_reader(server.rfd)

    def dispatch(self, frame: Frame | None) -> None:
        assert self.done is not None
        if frame is None:  # end of file: the host is gone, nobody waits for answers
            if not self.done.done():
                self.done.set_result(0)
            return
        kind = frame.kind
        server = self.server
        if kind == Kind.CALL:
            if server.begun is not None:
                server.begun[0] = frame.id
            self.running += 1
            # Registered here, on the loop that reads the channel, so that a CANCEL or CREDIT
            # read before the call's thread picks it up still finds it.
            self.link.context(frame.id, "", frame.flags)
            if frame.flags & STREAM:
                self.link.gate(frame.id)
            self.work.put(frame)
        elif kind == Kind.PING:
            server.send(
                Kind.PONG, frame.id, encode_body({"pid": os.getpid(), "calls": server.calls})
            )
        elif kind in (Kind.SESSION_OPEN, Kind.SESSION_CLOSE):
            _sessions.on_frame(frame)
        elif kind == Kind.SHUTDOWN:
            self.closing = True  # answer the calls in flight, then exit 0
            self._maybe_done()
        else:
            print(f"snakeden worker: unexpected frame kind {kind}", file=sys.stderr, flush=True)
            if not self.done.done():
                self.done.set_result(EXIT_PROTOCOL_ERROR)

    def _serve_calls(self) -> None:
        server, link = self.server, self.link
        assert server.loop is not None
        while True:
            frame = self.work.get()
            if frame is None:
                return
            ctx = link.context(frame.id, "", frame.flags)
            token = enter(ctx)
            try:
                if frame.flags & SESSION:
                    _sessions.run_call(frame, server.handle_call, server.send_error)
                else:
                    server.handle_call(frame)
            except BrokenPipeError:
                pass  # the host is gone; the loop sees the end of file
            finally:
                leave(token)
                link.calls.pop(frame.id, None)
                server.loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:
        self.running -= 1
        self._maybe_done()

    def _maybe_done(self) -> None:
        assert self.done is not None
        if self.closing and self.running == 0 and not self.done.done():
            self.done.set_result(0)
