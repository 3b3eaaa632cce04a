"""The host end of one worker's channel: a pipe pair carrying snakeden frames.

A channel runs in one of two modes, chosen by the pool that owns it:

* **attached** to an event loop (the asyncio ``Pool``): a reader callback feeds the sans-IO decoder
  and resolves one future per request id; writes never block the loop.
* **blocking** (the thread ``SyncPool``): whoever holds the worker's lease writes the request and
  reads the reply on its own thread, with ``poll()`` for the deadline. No event-loop hop.

Only the lease holder talks to a worker, so neither mode needs locking on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import time
from collections import deque
from collections.abc import Callable

from snakeden._protocol import Frame, FrameDecoder, ProtocolViolation

# Reads go into one preallocated buffer: allocating a fresh 1 MiB bytes object per read costs
# an mmap/munmap pair, which showed up as ~40us per call.
_READ_SIZE = 256 * 1024


class ChannelLost(Exception):
    """The channel is unusable: EOF (the worker died), a protocol violation, or an OS error."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(str(cause) if cause else "end of file on the worker's channel")
        self.cause = cause


class Channel:
    def __init__(self, read_fd: int, write_fd: int, max_frame_size: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.decoder = FrameDecoder(max_frame_size)
        self.max_frame_size = max_frame_size
        self.lost: ChannelLost | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_lost: Callable[[ChannelLost], None] | None = None
        self._wbuf: deque[memoryview] = deque()
        self._batch: list[bytes | memoryview] | None = None
        self._rbuf = bytearray(_READ_SIZE)
        self._rview = memoryview(self._rbuf)

    def next_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF_FFFF + 1
        return self._next_id

    # --- attached (asyncio) mode -----------------------------------------------------------

    def attach(
        self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[ChannelLost], None]
    ) -> None:
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._loop = loop
        self._on_lost = on_lost
        loop.add_reader(self.read_fd, self._on_readable)

    def detach(self) -> None:
        """Leave attached mode for blocking mode. Only with nothing pending or queued."""
        assert not self._pending and not self._wbuf, "detach with requests in flight"
        if self._loop is not None:
            self._loop.remove_reader(self.read_fd)
            self._loop = None
        self._on_lost = None
        os.set_blocking(self.read_fd, True)
        os.set_blocking(self.write_fd, True)

    def expect(self, ident: int) -> asyncio.Future[Frame]:
        """A future for the reply to request ``ident`` (id 0: the worker's HELLO)."""
        assert self._loop is not None
        fut = self._loop.create_future()
        if self.lost is not None:
            fut.set_exception(self.lost)
        else:
            self._pending[ident] = fut
        return fut

    def forget(self, ident: int) -> None:
        self._pending.pop(ident, None)

    def send(self, data: bytes | memoryview) -> None:
        """Queue ``data`` for the worker; never blocks the loop."""
        if self.lost is not None:
            return  # the pending futures already carry the loss
        if self._batch is not None:
            self._batch.append(data)
            return
        if len(self._pending) > 1 and self._loop is not None:
            # Other requests are in flight (pipelining): gather what this loop iteration sends
            # into one write, and let the worker read it in one go.
            self._batch = [data]
            self._loop.call_soon(self._flush_batch)
            return
        self._write(data)

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch and self.lost is None:
            self._write(b"".join(batch))

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if not self._wbuf:
            try:
                view = view[os.write(self.write_fd, view) :]
            except BlockingIOError:
                pass
            except OSError as exc:
                self._lose(exc)
                return
            if not view:
                return
            assert self._loop is not None
            self._loop.add_writer(self.write_fd, self._on_writable)
        self._wbuf.append(view)

    def _on_writable(self) -> None:
        while self._wbuf:
            view = self._wbuf[0]
            try:
                n = os.write(self.write_fd, view)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(exc)
                return
            if n < len(view):
                self._wbuf[0] = view[n:]
                return
            self._wbuf.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self.write_fd)

    def _on_readable(self) -> None:
        try:
            n = os.readv(self.read_fd, [self._rbuf])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if not n:
            self._lose(None)
            return
        try:
            frames = self.decoder.feed(self._rview[:n])
        except ProtocolViolation as exc:
            self._lose(exc)
            return
        pending = self._pending
        for frame in frames:
            fut = pending.pop(frame.id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
            # else: a late reply to a request whose caller gave up; dropped by design.

    def _lose(self, cause: BaseException | None) -> None:
        if self.lost is not None:
            return
        self.lost = ChannelLost(cause)
        if self._loop is not None:
            self._loop.remove_reader(self.read_fd)
            self._loop.remove_writer(self.write_fd)
        self._wbuf.clear()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self.lost)
        if self._on_lost is not None:
            self._on_lost(self.lost)

    def close(self) -> None:
        """Stop watching the fds (the process handle owns and closes them)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.read_fd)
                self._loop.remove_writer(self.write_fd)
            self._loop = None
        if self.lost is None:
            self._lose(ChannelLost(None))

    # --- blocking mode ----------------------------------------------------------------------

    def request_blocking(
        self, ident: int, data: bytes | memoryview, deadline: float | None
    ) -> Frame:
        """Write a request and block until the frame with id ``ident`` arrives.

        Raises :class:`ChannelLost` or ``TimeoutError`` (``deadline`` is ``time.monotonic()``).
        """
        if self.lost is not None:
            raise self.lost
        self.write_blocking(data, deadline)
        return self.read_reply_blocking(ident, deadline)

    def write_blocking(self, data: bytes | memoryview, deadline: float | None) -> None:
        view = memoryview(data)
        try:
            while view:
                if deadline is not None:
                    self._wait(self.write_fd, select.POLLOUT, deadline)
                view = view[os.write(self.write_fd, view) :]
        except OSError as exc:
            raise self._lost_blocking(exc) from None

    def read_reply_blocking(self, ident: int, deadline: float | None) -> Frame:
        while True:
            if deadline is not None:
                self._wait(self.read_fd, select.POLLIN, deadline)
            try:
                n = os.readv(self.read_fd, [self._rbuf])
            except OSError as exc:
                raise self._lost_blocking(exc) from None
            if not n:
                raise self._lost_blocking(None)
            try:
                frames = self.decoder.feed(self._rview[:n])
            except ProtocolViolation as exc:
                raise self._lost_blocking(exc) from None
            # One lease, one request at a time: any other id is a late reply to a request
            # whose caller gave up, and is dropped.
            for frame in frames:
                if frame.id == ident:
                    return frame

    def _lost_blocking(self, cause: BaseException | None) -> ChannelLost:
        self.lost = ChannelLost(cause)
        return self.lost

    @staticmethod
    def _wait(fd: int, event: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if poller.poll(remaining * 1000.0):
                return
