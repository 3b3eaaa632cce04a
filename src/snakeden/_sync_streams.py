"""``SyncPool.stream()``: a generator command's items as a plain iterator (see ``_streams``).

On a blocking channel (the thread front's usual mode) the reader's own thread holds the lease
and reads the frames, as a call does; credit and CANCEL are written from that thread too. For a
pool of concurrent workers, whose channels the pool's loop reads, :class:`BridgedStream` walks
an asyncio :class:`~snakeden._streams.Stream` from the calling thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any

from snakeden._channel import ChannelLost
from snakeden._errors import CallTimeout
from snakeden._handle import Cause, WorkerHandle
from snakeden._protocol import FEATURE_STREAM, Kind, encode_body, encode_frame
from snakeden._streams import Stream, _frames, _item, _refuse, touch_session

if TYPE_CHECKING:
    from snakeden._core import PoolCore
    from snakeden._sessions import SessionRecord


class SyncStream:
    """The items of a generator command: ``for item in pool.stream(...)``; ``close()`` (or
    leaving ``with``) stops the generator in the worker."""

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
        self._timeout = timeout
        self._window = core.config.stream_window
        self._w: WorkerHandle | None = None
        self._ident = 0
        self._deadline: float | None = None
        self._waited = 0.0
        self._t1 = 0.0
        self._taken = 0
        self._done = False

    def __iter__(self) -> SyncStream:
        return self

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _start(self) -> None:
        core = self._core
        rec = self._session
        if rec is not None:
            touch_session(core, rec)
        w, self._waited = core.checkout_blocking(core.config.queue_timeout, rec)
        if FEATURE_STREAM not in w.features:
            self._done = True
            raise _refuse(core, w, self._name)
        body = self._body
        try:
            if type(body) is not bytes:
                body = core.place(w, body)  # shared memory; releases w on failure
            wrap = None if rec is None else functools.partial(core.session_frame, rec, w)
            ident = w.channel.next_id() if w.channel is not None else 0
            data = _frames(ident, self._flags, body, self._window, wrap)
        except BaseException:
            self._done = True
            if type(body) is bytes:  # place() gave the lease back itself
                core.release(w, None)
            raise
        self._w = w
        self._t1 = time.perf_counter()
        w.current_command = self._name
        channel = w.channel
        assert channel is not None
        self._ident = ident
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout
        channel.write_blocking(data, None)

    def __next__(self) -> Any:
        core = self._core
        while True:
            if self._done:
                raise StopIteration
            if self._w is None:
                self._start()
            w = self._w
            assert w is not None and w.channel is not None
            try:
                frame = w.channel.read_reply_blocking(self._ident, self._deadline)
            except TimeoutError:
                self.close("timeout")
                raise CallTimeout(
                    f"stream {self._name!r} did not finish within {self._timeout}s; it was "
                    f"cancelled in the worker"
                ) from None
            except ChannelLost as lost:
                self._w = None
                if core.call_lost(w, lost, self._waited, self._t1, 0):
                    continue  # the worker never had the call: another one runs it
                self._done = True
                w.gone.wait(5.0)  # for the exit status and the last stderr lines
                raise core.crash_error(w, lost, self._name) from None
            except BaseException:
                self._done = True
                core.worker_failed(w, Cause.INTERRUPTED)  # e.g. KeyboardInterrupt mid-read
                core.release(w, None)
                raise
            if frame.kind == Kind.STREAM_ITEM:
                self._taken += 1
                if self._taken >= max(1, self._window // 2):
                    w.channel.notify(
                        encode_frame(Kind.CREDIT, self._ident, encode_body(self._taken))
                    )
                    self._taken = 0
                return _item(frame, self._name)
            self._done = True
            if frame.kind == Kind.STREAM_END:
                core.release(w, "ok", self._waited, time.perf_counter() - self._t1)
                raise StopIteration
            # ERROR (raised from here), or a kind that breaks the protocol
            core.finish_call(w, frame, self._name, batch=False, waited=self._waited, t1=self._t1)
            raise StopIteration

    def close(self, outcome: str = "cancelled") -> None:
        """End the stream: CANCEL, then wait (up to ``cancel_grace``) for the worker's answer
        so that it goes back to the pool clean; past the grace it is killed and replaced."""
        if self._done:
            return
        self._done = True
        w, core = self._w, self._core
        if w is None:
            return
        assert w.channel is not None
        channel = w.channel
        channel.notify(encode_frame(Kind.CANCEL, self._ident))
        deadline = time.monotonic() + core.config.cancel_grace
        ran = time.perf_counter() - self._t1
        try:
            while True:
                frame = channel.read_reply_blocking(self._ident, deadline)
                if frame.kind != Kind.STREAM_ITEM:
                    break
        except TimeoutError:
            core.worker_failed(w, Cause.CANCEL_IGNORED)
        except ChannelLost:
            core.worker_failed(w, Cause.CRASHED)
        core.release(w, outcome, self._waited, ran)  # type: ignore[arg-type]


class BridgedStream:
    """A :class:`Stream` on the pool's loop, walked from a thread (concurrent workers)."""

    def __init__(self, stream: Stream, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop

    def __iter__(self) -> BridgedStream:
        return self

    def __enter__(self) -> BridgedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __next__(self) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(self._stream.__anext__(), self._loop).result()
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._stream.aclose(), self._loop).result()
