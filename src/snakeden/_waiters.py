"""A caller queued for a worker: its place in the checkout's FIFO, and how it is woken.

The checkout assigns a worker to a waiter under its lock; waking happens afterwards, outside it
(``Actions.wake``), on the loop for a task and from any thread for a thread.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from snakeden._handle import WorkerHandle


# How a caller takes a worker (pipelining: Checkout.acquire):
FREE: Final = 0  # a free worker only; calls may queue behind its own (map lanes, timed calls)
JOIN: Final = 1  # may also queue behind the call a busy worker runs (a plain call, no timeout)
ALONE: Final = 2  # a free worker, and nothing queues behind it (a stream: its reader paces it)


class AsyncWaiter:
    """A task's place in the queue. Woken on the loop, so no lock is needed to resolve it."""

    __slots__ = ("fut", "mode", "worker")

    def __init__(self, fut: asyncio.Future[WorkerHandle]) -> None:
        self.fut = fut
        self.worker: WorkerHandle | None = None  # assigned under the checkout lock
        self.mode = FREE

    def alive(self) -> bool:
        return not self.fut.done()

    def wake(self) -> None:
        if self.worker is not None and not self.fut.done():
            self.fut.set_result(self.worker)

    def fail(self, exc: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class ThreadWaiter:
    """A thread's place in the queue."""

    __slots__ = ("error", "event", "gave_up", "mode", "worker")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.worker: WorkerHandle | None = None
        self.mode = FREE
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
