"""Streams on the host: ``Pool.stream()`` (an async iterator) and ``SyncPool.stream()`` (an
iterator), for a generator command's items (docs/protocol.md §6.6).

The CALL goes out with the STREAM flag and, in the same write, CREDIT for ``stream_window``
items. Each item the reader takes is counted; once half a window is taken, that many more are
granted, so the worker never runs more than a window ahead of a slow reader and neither process
buffers more than a window of items. The worker's lease ends when the worker's last frame for the
stream (STREAM_END, or ERROR) arrives, whether or not the reader has taken every item yet.

A reader that stops early (``aclose()``/``close()``, leaving ``async with``/``with``, ``break``
and dropping the stream, garbage collection, its own cancellation, the stream's timeout) sends
CANCEL: the worker closes the generator and answers, and the worker is given back; one that does
not answer within ``cancel_grace`` is killed and replaced, as for a cancelled call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snakeden._calls import error_from_body
from snakeden._channel import ChannelLost
from snakeden._errors import CallTimeout, FeatureNotSupported, ProtocolError, SessionExpired
from snakeden._handle import Cause, WorkerHandle
from snakeden._protocol import (
    FEATURE_STREAM,
    STREAM,
    Frame,
    Kind,
    decode_body,
    encode_body,
    encode_frame,
    encode_header,
)
from snakeden._waiters import ALONE

if TYPE_CHECKING:
    from snakeden._core import PoolCore
    from snakeden._sessions import SessionRecord

_EXPIRED = object()


def _frames(
    ident: int, flags: int, body: bytes, window: int, wrap: Callable[[bytes], bytes] | None
) -> bytes:
    """The CALL (through ``wrap``: a session's) and its first CREDIT, for one write."""
    call = encode_header(Kind.CALL, ident, len(body), flags | STREAM) + body
    if wrap is not None:
        call = wrap(call)
    return call + encode_frame(Kind.CREDIT, ident, encode_body(window))


def touch_session(core: PoolCore, rec: SessionRecord) -> None:
    """A stream of session ``rec`` starts: a use of the session, like a call's start (raises
    if the session cannot be used). Unlike a call, a stream does not hold the session under way:
    one that outlasts the session's ``ttl`` with no other use lets it expire."""
    try:
        core.checkout.session_begin(rec)
    except SessionExpired:
        core.close_session(rec)  # drop its state in the worker now
        raise
    core.checkout.session_done(rec)


def _refuse(core: PoolCore, w: WorkerHandle, name: str) -> FeatureNotSupported:
    core.release(w, None)
    return FeatureNotSupported(
        f"worker {w.id} (pid {w.pid}) cannot stream {name!r}: its HELLO does not list the "
        f"'stream' feature (a worker runtime without streams, e.g. the Node.js one); call it "
        f"with pool.call() instead"
    )


def _item(frame: Frame, name: str) -> Any:
    try:
        return decode_body(frame)
    except Exception as exc:
        raise ProtocolError(f"worker sent an undecodable item of {name!r}: {exc}") from exc


class _Run:
    """One stream's lease and frames (what the channel holds; the reader holds the Stream, so
    dropping the Stream can cancel the run)."""

    def __init__(self, core: PoolCore, name: str, timeout: float | None) -> None:
        self.core = core
        self.name = name
        self.timeout = timeout
        self.items: deque[Frame] = deque()
        self.end: Frame | ChannelLost | object | None = None
        self.error: BaseException | None = None
        self.wake: asyncio.Future[None] | None = None
        self.w: WorkerHandle | None = None
        self.ident = 0
        self.waited = 0.0
        self.t1 = 0.0
        self.aborting: str | None = None  # the outcome to count once the worker answers
        self.released = False
        self.retry = False
        self.timers: list[asyncio.TimerHandle] = []

    def on_frame(self, got: Frame | ChannelLost) -> None:
        if isinstance(got, Frame) and got.kind == Kind.STREAM_ITEM:
            if self.aborting is None:
                self.items.append(got)
        else:
            self.end = self.end if self.end is _EXPIRED else got
            self._settle(got)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def _settle(self, got: Frame | ChannelLost) -> None:
        """The worker's last frame for the stream: its lease ends here."""
        w, core = self.w, self.core
        assert w is not None and w.channel is not None
        w.channel.forget(self.ident)
        for t in self.timers:
            t.cancel()
        if self.released:
            return
        self.released = True
        ran = time.perf_counter() - self.t1
        if isinstance(got, ChannelLost):
            if self.aborting is not None:
                core.worker_failed(w, Cause.CRASHED)
                core.release(w, self.aborting, self.waited, ran)  # type: ignore[arg-type]
            else:
                self.retry = core.call_lost(w, got, self.waited, self.t1, 0)
            return
        outcome = self.aborting or ("ok" if got.kind == Kind.STREAM_END else "failed")
        core.release(w, outcome, self.waited, ran)  # type: ignore[arg-type]

    def start(  # noqa: PLR0917 - the lease and the request, as the Stream has them
        self,
        w: WorkerHandle,
        waited: float,
        flags: int,
        body: Any,
        window: int,
        wrap: Callable[[bytes], bytes] | None,
    ) -> None:
        """Send the stream's CALL on ``w``. Raises (the lease given back, nothing sent) when its
        body cannot be placed or its session cannot run there."""
        core = self.core
        channel = w.channel
        assert channel is not None
        if type(body) is not bytes:
            body = core.place(w, body)  # large buffers by shared memory; releases w on failure
        ident = channel.next_id()
        try:
            data = _frames(ident, flags, body, window, wrap)
        except BaseException:
            core.release(w, None)
            raise
        self.w, self.waited, self.t1 = w, waited, time.perf_counter()
        w.current_command = self.name
        self.ident = ident
        channel.expect_stream(self.ident, self.on_frame)
        channel.send(data, self.ident)
        if self.timeout is not None:
            self.timers.append(self.core.loop.call_later(self.timeout, self.expire))

    def grant(self, n: int) -> None:
        w = self.w
        if self.end is None and w is not None and w.channel is not None:
            w.channel.notify(encode_frame(Kind.CREDIT, self.ident, encode_body(n)))

    def expire(self) -> None:
        if self.end is None:
            self.error = CallTimeout(
                f"stream {self.name!r} did not finish within {self.timeout}s; it was cancelled "
                f"in the worker"
            )
            self.abort("timeout")
            self.end = _EXPIRED
            if self.wake is not None and not self.wake.done():
                self.wake.set_result(None)

    def abort(self, outcome: str = "cancelled") -> None:
        """Stop the stream in the worker (CANCEL), reclaim the worker when it answers."""
        w = self.w
        self.items.clear()
        if w is None or self.released or self.aborting is not None:
            return
        self.aborting = outcome
        assert w.channel is not None
        w.channel.notify(encode_frame(Kind.CANCEL, self.ident))
        grace = self.core.config.cancel_grace
        kill = self.core.loop.call_later(grace, self.core.worker_failed, w, Cause.CANCEL_IGNORED)
        self.timers.append(kill)


class Stream:
    """The items of a generator command, as they come: ``async for item in pool.stream(...)``.

    Also an async context manager (``async with pool.stream(...) as items:``), which closes it
    on the way out. :meth:`aclose` stops the generator in the worker."""

    def __init__(
        self,
        core: PoolCore,
        request: tuple[str, int, Any],
        timeout: float | None,
        session: SessionRecord | None = None,
    ) -> None:
        self._core = core
        self._name, self._flags, self._body = request
        self._session = session
        self._run = _Run(core, self._name, timeout)
        self._started = False
        self._done = False
        self._taken = 0
        self._window = core.config.stream_window

    def __aiter__(self) -> Stream:
        return self

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the stream; the worker stops the generator (its ``finally`` blocks run)."""
        self._done = True
        self._run.abort()

    def __del__(self) -> None:
        run = self._run
        if self._started and run.end is None and run.aborting is None:
            loop = self._core.loop
            with contextlib.suppress(RuntimeError):  # the loop is closed: the pool is gone
                loop.call_soon_threadsafe(run.abort)

    async def _start(self) -> None:
        core = self._core
        rec = self._session
        if rec is not None:
            touch_session(core, rec)
        # ALONE: a call queued behind the stream would wait on its reader, who may wait on it.
        w, waited = await core.checkout_async(core.config.queue_timeout, rec, ALONE)
        if FEATURE_STREAM not in w.features:
            raise _refuse(core, w, self._name)
        wrap = None if rec is None else functools.partial(core.session_frame, rec, w)
        self._run.start(w, waited, self._flags, self._body, self._window, wrap)
        self._started = True

    async def __anext__(self) -> Any:
        while True:
            try:
                return await self._next()
            except _Again:
                continue  # the worker died before it had the call: another one runs it

    async def _next(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if not self._started:
            await self._start()
        run = self._run
        while True:
            if run.items:
                frame = run.items.popleft()
                self._taken += 1
                if self._taken >= max(1, self._window // 2):
                    run.grant(self._taken)
                    self._taken = 0
                return _item(frame, self._name)
            if run.end is not None:
                self._done = True
                await self._ended()
                raise StopAsyncIteration
            run.wake = self._core.loop.create_future()
            try:
                await run.wake
            except asyncio.CancelledError:
                self._done = True
                run.abort()
                raise
            finally:
                run.wake = None

    async def _ended(self) -> None:
        run, core = self._run, self._core
        end = run.end
        if end is _EXPIRED:
            assert run.error is not None
            raise run.error
        if isinstance(end, ChannelLost):
            if run.retry:  # never reached the worker: run it on another
                self._run = _Run(core, self._name, run.timeout)
                self._started = self._done = False
                raise _Again
            assert run.w is not None
            await core.wait_gone(run.w)
            raise core.crash_error(run.w, end, self._name) from None
        assert isinstance(end, Frame)
        if end.kind == Kind.ERROR:
            raise error_from_body(_item(end, self._name), self._name)
        if end.kind != Kind.STREAM_END:
            raise ProtocolError(f"worker ended stream {self._name!r} with frame kind {end.kind}")


class _Again(Exception):
    pass
