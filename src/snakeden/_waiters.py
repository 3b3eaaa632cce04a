"""A caller queued for a worker: its place in the checkout's FIFO, and how it is woken.

The checkout assigns a worker to a waiter under its lock; waking happens afterwards, outside it
(``Actions.wake``), on the loop for a task and from any thread for a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from snakeden._protocol import KIND_CALL, NO_REGION, encode_header

if TYPE_CHECKING:
    from snakeden._handle import WorkerHandle
    from snakeden._pipeline import Sweeper


# How a caller takes a worker (pipelining: Checkout.acquire):
FREE: Final = 0  # a free worker only; calls may queue behind its own (map lanes, timed calls)
JOIN: Final = 1  # may also queue behind the call a busy worker runs (a plain call, no timeout)
ALONE: Final = 2  # a free worker, and nothing queues behind it (a stream: its reader paces it)


class AsyncWaiter:
    """A task's place in the queue. Woken on the loop, so no lock is needed to resolve it."""

    __slots__ = ("again", "fut", "mode", "worker")

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut  # resolved with the worker (a QueuedCall's: with the reply)
        self.worker: WorkerHandle | None = None  # assigned under the checkout lock
        self.mode = FREE
        self.again = False  # sent before (taken back, or its worker died): queued first

    def alive(self) -> bool:
        return not self.fut.done()

    def wake(self) -> None:
        if self.worker is not None and not self.fut.done():
            self.fut.set_result(self.worker)

    def fail(self, exc: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class QueuedCall(AsyncWaiter):
    """A plain call (no session, trace or timeout) queued by the asyncio front: its frame is
    written by the step that assigns it a worker, and its future is the reply's, so its task
    wakes once, for the reply, not once for the worker and then again for the reply.

    ``ident`` stays 0 until the frame is written; from then on the call is the channel's, and
    only the caller's own handling of a reply, a loss or its cancellation applies."""

    __slots__ = ("body", "flags", "ident", "name", "sweeper", "t1")

    def __init__(
        self,
        fut: asyncio.Future[Any],
        name: str,
        flags: int,
        body: bytes,
        sweeper: Sweeper,
    ) -> None:
        super().__init__(fut)
        self.sweeper = sweeper  # told when the call is sent behind another (pipelining)
        self.name = name
        self.flags = flags
        self.body = body
        self.ident = 0
        self.t1 = 0.0  # when the frame was written: where the call's latency starts

    def wake(self) -> None:
        w = self.worker
        if w is None or self.fut.done():
            return
        channel = w.channel
        assert channel is not None  # a worker in service has one, attached: asyncio's
        self.t1 = time.perf_counter()
        w.current_command = self.name  # for the live view (snakeden top)
        ident = self.ident = channel.next_id()
        # A lost channel fails the future at once, as unsent: the caller sends it elsewhere.
        channel.expect(ident, self.fut)
        body = self.body
        # Handed a worker with calls in its pipe (pipelining): behind them, by pipe (NO_REGION),
        # and the host may take it back from there if another worker comes free.
        if w.inflight == 1:
            channel.send(encode_header(KIND_CALL, ident, len(body), self.flags) + body, ident)
        else:
            flags = self.flags | NO_REGION
            data = encode_header(KIND_CALL, ident, len(body), flags) + body
            channel.send(data, ident, takeable=w.pipelined)
            if w.pipelined:
                self.sweeper.watch()

    def lease(self) -> tuple[WorkerHandle, int, float]:
        """The worker, request id and send time of the call, once sent."""
        assert self.worker is not None and self.ident
        return self.worker, self.ident, self.t1

    def fail(self, exc: BaseException) -> None:
        if not self.ident:  # once sent, the call is no longer the queue's to fail
            super().fail(exc)


class ThreadWaiter:
    """A thread's place in the queue."""

    __slots__ = ("again", "error", "event", "gave_up", "mode", "worker")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.worker: WorkerHandle | None = None
        self.mode = FREE
        self.again = False
        self.error: BaseException | None = None
        self.gave_up = False

    def alive(self) -> bool:
        return not self.gave_up and self.error is None

    def wake(self) -> None:
        self.event.set()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.event.set()


Waiter = AsyncWaiter | ThreadWaiter
