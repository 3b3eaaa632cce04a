"""The host end of one worker's channel: a pipe pair carrying snakeden frames.

A channel runs in one of two modes, chosen by the pool that owns it:

* **attached** to an event loop (the asyncio ``Pool``): a reader callback feeds the sans-IO decoder
  and resolves one future per request id; writes never block the loop.
* **blocking** (the thread ``SyncPool``): whoever holds the worker's lease writes the request and
  reads the reply on its own thread, with ``poll()`` for the deadline. No event-loop hop.

Only the lease holder talks to a worker, so neither mode needs locking on the hot path. The
few things the supervisor says to a worker (a ping, SHUTDOWN) go through :meth:`Channel.roundtrip`
and :meth:`Channel.notify`, which work in either mode, so the pool never asks which one it has.

When the channel is lost, each request still waiting learns whether the worker can have run it
(``ChannelLost.unsent``): a request the worker never read to its end cannot have started. The
host is the only writer of the pipe, so what the kernel still holds unread (``FIONREAD`` on the
write end, which keeps its contents after the reader's death) tells how far the worker read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import struct
import termios
import time
from collections import deque
from collections.abc import Callable

import msgpack

from snakeden._protocol import PICKLE, SKIPPED, Frame, FrameDecoder, Kind, ProtocolViolation
from snakeden._shm import fence, note_skip

# Reads go into one preallocated buffer: allocating a fresh 1 MiB bytes object per read costs
# an mmap/munmap pair, which showed up as ~40us per call.
_READ_SIZE = 256 * 1024


_HOST_CALL = int(Kind.HOST_CALL)  # a plain int: an IntEnum attribute costs on every frame
_ERROR = int(Kind.ERROR)

# Replies that arrived for a caller already cancelled, kept for the abandon path to claim.
_MAX_UNCLAIMED = 1024


class ChannelLost(Exception):
    """The channel is unusable: EOF (the worker died), a protocol violation, or an OS error.

    ``unsent``: the request this was raised for never reached the worker whole, so it cannot
    have run; the pool sends it to another worker instead of failing it."""

    def __init__(self, cause: BaseException | None, *, unsent: bool = False) -> None:
        super().__init__(str(cause) if cause else "end of file on the worker's channel")
        self.cause = cause
        self.unsent = unsent

    def for_request(self, unsent: bool) -> ChannelLost:
        return ChannelLost(self.cause, unsent=unsent)


class TakenBack(Exception):
    """Nobody's fault, and never seen by a user: the call waited in a worker's pipe behind a
    long one while another worker came free, and the host took it back before the worker began
    it (:meth:`Channel.take_back`). Its caller sends it again, to a free worker."""


def ident_begun(slot: memoryview) -> int:
    return int(slot[0])


def comes_after(ident: int, begun: int) -> bool:
    """Whether call ``ident`` comes after call ``begun`` (ids of one channel increase, modulo
    2**32): not begun by a worker whose begun slot holds ``begun``."""
    return 0 < (ident - begun) % (1 << 32) < (1 << 31)


def claim_unbegun(slot: memoryview, idents: list[int], note: Callable[[int], None]) -> set[int]:
    """Of ``idents`` (calls waiting in a worker's pipe), those the worker will provably never
    begin: ``note`` asks it to skip each, and the begun slot then says which it had not begun.

    Dekker's handshake (``_shm.fence``): the host notes the skips, then reads the begun id; the
    worker stores the begun id, then reads the skips. If the host reads an id before a call's,
    the worker sees that call's note before it runs it. The others it may have begun, or may
    yet skip: their replies say (SKIPPED, or their result)."""
    for ident in idents:
        note(ident)
    fence()
    begun = ident_begun(slot)
    return {ident for ident in idents if comes_after(ident, begun)}


def is_skipped_reply(frame: Frame) -> bool:
    """Whether ``frame`` is the worker's answer for a call it skipped (``_protocol.SKIPPED``)."""
    if frame.kind != _ERROR or frame.flags & PICKLE:
        return False
    try:
        body = msgpack.unpackb(frame.body)
    except Exception:
        return False
    return isinstance(body, dict) and body.get("message") == SKIPPED


def _unread(fd: int) -> int:
    """Bytes written to the pipe ``fd`` and not yet read by the other end (0 if unknown)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


class Channel:
    def __init__(self, read_fd: int, write_fd: int, max_frame_size: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.decoder = FrameDecoder(max_frame_size)
        self.max_frame_size = max_frame_size
        self.lost: ChannelLost | None = None
        # Where the worker notes the id of each call as it begins it (a Python worker's shared
        # slot, see _shm.begun_path): exact where the pipe only says what was read.
        self.begun: memoryview | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._unclaimed: dict[int, Frame] = {}
        self._ends: dict[int, int] = {}  # request id -> byte offset where its frame ends
        # Calls sent behind another (pipelining) whose callers can send them again, in the order
        # sent: what take_back() may take. And those it asked the worker to skip but could not
        # tell whether it had begun: their reply says (the worker's SKIPPED, or their result).
        self._takeable: dict[int, None] = {}
        self._asked: set[int] = set()
        # Calls noted in the begun slot's ring of ids to skip, until their reply comes: once
        # each, for the ring holds no more than the calls a worker can have waiting (62).
        self._noted: set[int] = set()
        self._queued = 0  # bytes handed to send(), written or not
        self._written = 0  # bytes the kernel accepted
        self.loop: asyncio.AbstractEventLoop | None = None  # the pool's loop, in either mode
        self._loop: asyncio.AbstractEventLoop | None = None  # set while attached
        self._on_lost: Callable[[ChannelLost], None] | None = None
        self._wbuf: deque[memoryview] = deque()
        self._writing = False  # the loop watches write_fd for room
        self._batch: list[bytes | memoryview] | None = None
        self._rpoll = select.poll()  # kept: one per call would cost a syscall pair
        self._rpoll.register(read_fd, select.POLLIN)
        self._rbuf = bytearray(_READ_SIZE)
        self._rview = memoryview(self._rbuf)
        # Streams: each frame for a stream's id goes to its consumer (items, then its end);
        # a lost channel reaches them as the ChannelLost.
        self._streams: dict[int, Callable[[Frame | ChannelLost], None]] = {}
        # A HOST_CALL from the worker (its id is the worker's, not a request's): the pool's.
        self.on_host_call: Callable[[Channel, Frame], None] | None = None
        self._rq: deque[Frame] = deque()  # blocking mode: frames read after the one wanted
        self._violation: ProtocolViolation | None = None  # blocking mode: to raise next read

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def next_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF_FFFF + 1
        return self._next_id

    # --- attached (asyncio) mode -----------------------------------------------------------

    def attach(
        self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[ChannelLost], None]
    ) -> None:
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.loop = self._loop = loop
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

    def expect(self, ident: int, fut: asyncio.Future[Frame] | None = None) -> asyncio.Future[Frame]:
        """A future (``fut``, or a new one) for the reply to request ``ident`` (id 0: the
        worker's HELLO).

        A reply that came for a caller cancelled meanwhile is handed to the next ``expect`` of
        the same id: the abandon path claims it instead of waiting for a reply already in."""
        if fut is None:
            assert self.loop is not None, "channel never attached"
            fut = self.loop.create_future()
        if self._takeable:
            self._takeable.pop(ident, None)  # expected again: its caller was cancelled
        frame = self._unclaimed.pop(ident, None)
        if frame is not None:
            fut.set_result(frame)
        elif self.lost is not None:
            fut.set_exception(self.lost.for_request(unsent=ident not in self._ends))
        else:
            self._pending[ident] = fut
        return fut

    def expect_stream(self, ident: int, consumer: Callable[[Frame | ChannelLost], None]) -> None:
        """Send every frame for ``ident`` to ``consumer`` until :meth:`forget`."""
        if self.lost is not None:
            consumer(self.lost.for_request(unsent=True))
            return
        self._streams[ident] = consumer

    def forget(self, ident: int) -> None:
        self._takeable.pop(ident, None)
        self._pending.pop(ident, None)
        self._streams.pop(ident, None)
        self._unclaimed.pop(ident, None)
        self._ends.pop(ident, None)

    def send(
        self, data: bytes | memoryview, ident: int | None = None, *, takeable: bool = False
    ) -> None:
        """Queue ``data`` (the request ``ident``, if it expects a reply); never blocks the loop.
        ``takeable``: a call sent behind another, which :meth:`take_back` may take back."""
        if self.lost is not None:
            return  # the pending futures already carry the loss
        self._queued += len(data)
        if ident is not None:
            self._ends[ident] = self._queued
            if takeable:
                self._takeable[ident] = None
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
        if not self._wbuf:
            # Nothing waits for the pipe to drain: write now (the common case, all of it).
            try:
                n = os.write(self.write_fd, data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                # Replies the worker wrote before it died may wait in the pipe (pipelining:
                # other calls are in flight as this one goes out): theirs, not the crash's.
                self._read_the_rest()
                self._lose(exc)
                return
            self._written += n
            if n == len(data):
                return
            data = memoryview(data)[n:]
        self._wbuf.append(memoryview(data))
        if len(self._wbuf) == 1:  # else a write is already waiting for the pipe to drain
            self._on_writable()

    def _on_writable(self) -> None:
        while self._wbuf:
            view = self._wbuf[0]
            try:
                n = os.write(self.write_fd, view)
            except BlockingIOError:
                break
            except OSError as exc:
                self._read_the_rest()
                self._lose(exc)
                return
            self._written += n
            if n < len(view):
                self._wbuf[0] = view[n:]
                break
            self._wbuf.popleft()
        if self._loop is not None and bool(self._wbuf) != self._writing:
            self._writing = bool(self._wbuf)
            if self._writing:
                self._loop.add_writer(self.write_fd, self._on_writable)
            else:
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
            # Replies read with the garbage, before it, are their callers' (a worker that
            # answered one call and broke the protocol in the next, both in one read).
            self._deliver(exc.frames)
            self._lose(exc)
            return
        self._deliver(frames)

    def _deliver(self, frames: list[Frame]) -> None:
        pending = self._pending
        ends = self._ends
        streams = self._streams
        for frame in frames:
            if frame.kind == _HOST_CALL:
                self._host_call(frame)
                continue
            if streams:
                consumer = streams.get(frame.id)
                if consumer is not None:
                    consumer(frame)
                    continue
            fut = pending.pop(frame.id, None)
            ends.pop(frame.id, None)
            if self._takeable:
                self._takeable.pop(frame.id, None)
            if self._noted:
                self._noted.discard(frame.id)
            if fut is None:
                continue  # a late reply to a request whose caller gave up (a ping's timeout)
            if self._asked and frame.id in self._asked:
                self._asked.discard(frame.id)
                if is_skipped_reply(frame) and not fut.done():
                    fut.set_exception(TakenBack())  # the worker saw the note after all
                    continue
            if not fut.done():
                fut.set_result(frame)
            elif fut.cancelled() and len(self._unclaimed) < _MAX_UNCLAIMED:
                # The caller was cancelled in this same loop turn: its abandon path will look
                # for this reply rather than wait for one that already came.
                self._unclaimed[frame.id] = frame

    def take_back(self, *, every: bool = False) -> int:
        """Take back the oldest call waiting behind the one the worker runs (``every``: all
        of them) that the worker provably has not begun: its caller gets :class:`TakenBack`
        and sends it again. Returns how many were taken. A call the worker may just have begun
        stays; if the worker skipped it after all, its SKIPPED answer becomes TakenBack as it
        comes (:func:`claim_unbegun`)."""
        slot = self.begun
        if slot is None or self.lost is not None or not self._takeable:
            return 0
        begun = ident_begun(slot)
        asking = [i for i in self._takeable if i not in self._asked and comes_after(i, begun)]
        if not every:
            del asking[1:]
        taken = claim_unbegun(slot, asking, self.ask_skip)
        for ident in asking:
            if ident not in taken:
                self._asked.add(ident)  # begun meanwhile, or about to be skipped: its reply says
                continue
            del self._takeable[ident]
            self._ends.pop(ident, None)
            fut = self._pending.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_exception(TakenBack())
        return len(taken)

    def ask_skip(self, ident: int) -> None:
        """Ask the worker to skip call ``ident`` if it has not begun it (``_shm.note_skip``);
        a call is noted once, whoever asks (a take-back, its caller's cancellation)."""
        if self.begun is not None and ident not in self._noted:
            self._noted.add(ident)
            note_skip(self.begun, ident)

    def host_call(self, frame: Frame) -> None:
        """A HOST_CALL frame read by a lease holder with several requests in flight."""
        self._host_call(frame)

    def _host_call(self, frame: Frame) -> None:
        if self.on_host_call is not None:
            self.on_host_call(self, frame)

    def _read_the_rest(self) -> None:
        """Before the channel is judged lost for a reason other than what was read (its
        process's exit, a write that failed): read the replies already there, or calls the
        worker answered would be judged by its begun slot as if still running."""
        while self._loop is not None and self.lost is None and self._rpoll.poll(0):
            self._on_readable()

    def _lose(self, cause: BaseException | None) -> None:
        if self.lost is not None:
            return
        self.lost = ChannelLost(cause)
        if self._loop is not None:
            self._loop.remove_reader(self.read_fd)
            self._loop.remove_writer(self.write_fd)
        self._wbuf.clear()
        consumed = self._written - _unread(self.write_fd)
        never = self._ends.get(ident_begun(self.begun), -1) if self.begun is not None else None

        def unsent(ident: int) -> bool:
            # Not read whole, or (where the worker notes it) after the call it last began. A
            # stream begins as a call does, so the same holds for both.
            end = self._ends.get(ident, self._queued + 1)
            return end > consumed or (never is not None and end > never)

        lost = self.lost
        self._takeable.clear()
        self._asked.clear()
        self._noted.clear()
        pending, self._pending = self._pending, {}
        for ident, fut in pending.items():
            if not fut.done():
                fut.set_exception(lost.for_request(unsent(ident)))
        streams, self._streams = self._streams, {}
        for ident, consumer in streams.items():
            consumer(lost.for_request(unsent(ident)))
        if self._on_lost is not None:
            self._on_lost(self.lost)

    def close(self) -> None:
        """Stop watching the fds (the process handle owns and closes them)."""
        # The exit notice and the readable pipe come in one loop turn, in either order: a
        # reply the worker wrote just before it died belongs to its caller, not to the crash.
        self._read_the_rest()
        self._unclaimed.clear()
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
            raise self.lost.for_request(unsent=True)
        if self._violation is not None:  # garbage came after the last reply
            raise self._lost_blocking(self._violation, unsent=True)
        if self._rpoll.poll(0):
            self._read_idle_input()
        if deadline is None:  # the common case, inline: one write, all of it
            try:
                n = os.write(self.write_fd, data)
            except OSError as exc:
                raise self._lost_blocking(exc, unsent=True) from None
            if n < len(data):
                self.write_blocking(memoryview(data)[n:], None)
        else:
            self.write_blocking(data, deadline)
        return self.read_reply_blocking(ident, deadline)

    def begin_blocking(self) -> None:
        """A lease holder's first step before several requests in flight (``map``): raises
        ChannelLost (unsent) for a channel already lost or a worker that broke while idle."""
        if self.lost is not None:
            raise self.lost.for_request(unsent=True)
        if self._violation is not None:  # garbage came after the last reply
            raise self._lost_blocking(self._violation, unsent=True)
        if self._rpoll.poll(0):
            self._read_idle_input()

    def read_frames_blocking(self, deadline: float | None) -> list[Frame]:
        """One read: the frames it completed (maybe none), for a lease holder with several
        requests in flight, which sorts them out by id itself. Raises TimeoutError or
        ChannelLost (unsent=False: only the caller knows what each request's fate is)."""
        if self._violation is not None:  # read with the frames returned last time
            raise self._lost_blocking(self._violation, unsent=False)
        if deadline is not None:
            self._wait(self.read_fd, select.POLLIN, deadline)
        try:
            n = os.readv(self.read_fd, [self._rbuf])
        except OSError as exc:
            raise self._lost_blocking(exc, unsent=False) from None
        if not n:
            raise self._lost_blocking(None, unsent=False)
        try:
            return self.decoder.feed(self._rview[:n])
        except ProtocolViolation as exc:
            if not exc.frames:
                raise self._lost_blocking(exc, unsent=False) from None
            # The frames before the garbage first: the loss comes with the next read.
            self._violation = exc
            return exc.frames

    def unread(self) -> int:
        """Bytes written to the worker and not read by it yet."""
        return _unread(self.write_fd)

    def _read_idle_input(self) -> None:
        """Nobody reads a blocking channel between calls: what a worker wrote while idle (a
        late reply, garbage, end of file) is read before the request is written (a poll()
        says whether there is any), so a broken worker fails a call that provably never
        reached it."""
        while True:
            try:
                n = os.readv(self.read_fd, [self._rbuf])
                if not n:
                    raise self._lost_blocking(None, unsent=True)
                self.decoder.feed(self._rview[:n])  # late replies: dropped
            except (OSError, ProtocolViolation) as exc:
                raise self._lost_blocking(exc, unsent=True) from None
            if not self._rpoll.poll(0):
                return

    def write_blocking(self, data: bytes | memoryview, deadline: float | None) -> None:
        view = memoryview(data)
        try:
            while view:
                if deadline is not None:
                    self._wait(self.write_fd, select.POLLOUT, deadline)
                view = view[os.write(self.write_fd, view) :]
        except OSError as exc:
            # Not all of it reached the pipe: the worker cannot have read the request whole.
            raise self._lost_blocking(exc, unsent=True) from None

    def read_reply_blocking(self, ident: int, deadline: float | None) -> Frame:
        rq = self._rq
        while rq:  # read with an earlier frame (a stream's items come many per read)
            frame = rq.popleft()
            if frame.kind == _HOST_CALL:
                self._host_call(frame)
            elif frame.id == ident:
                return frame
        while True:
            try:
                frames = self.read_frames_blocking(deadline)
            except ChannelLost as lost:
                if lost.cause is not None:
                    raise
                # End of file. The request was the last thing written: while any of it is
                # still unread, the worker never had it whole; and a worker that notes what it
                # begins says so.
                unsent = _unread(self.write_fd) > 0 or (
                    self.begun is not None and self.begun[0] != ident
                )
                raise lost.for_request(unsent) from None
            # One lease, one request at a time: any other id is a late reply to a request
            # whose caller gave up, and is dropped.
            for i, frame in enumerate(frames):
                if frame.kind == _HOST_CALL:
                    self._host_call(frame)  # runs the host function on this thread
                elif frame.id == ident:
                    if i + 1 < len(frames):
                        rq.extend(frames[i + 1 :])
                    return frame

    def _lost_blocking(self, cause: BaseException | None, *, unsent: bool) -> ChannelLost:
        self.lost = ChannelLost(cause)
        return self.lost.for_request(unsent)

    # --- either mode ------------------------------------------------------------------------

    async def roundtrip(self, ident: int, data: bytes, timeout: float) -> Frame:
        """A request from the supervisor (a ping), in whichever mode the channel is.

        Raises ``TimeoutError`` or :class:`ChannelLost`."""
        assert self.loop is not None
        if self.lost is not None:
            raise self.lost.for_request(unsent=True)
        if self._loop is None:  # blocking mode: the lease is the supervisor's, so is the thread
            deadline = time.monotonic() + timeout
            return await self.loop.run_in_executor(
                None, self.request_blocking, ident, data, deadline
            )
        fut = self.expect(ident)
        self.send(data, ident)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.forget(ident)

    def notify(self, data: bytes) -> None:
        """A frame that expects no reply (SHUTDOWN, CANCEL). Never blocks for long."""
        if self.lost is not None:
            return
        if self._loop is not None:
            self.send(data)
            return
        with contextlib.suppress(ChannelLost, TimeoutError):
            self.write_blocking(data, time.monotonic() + 1.0)

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
