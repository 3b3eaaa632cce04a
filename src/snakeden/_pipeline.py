"""Pipelining, the checkout's part of it (mixed into :class:`~snakeden._checkout.Checkout`).

A pipelined worker runs its calls one at a time and holds up to ``depth`` (the pool's
``pipeline``) in flight: the others wait in its pipe, behind the running one. That costs neither
crash isolation nor timeouts because such a worker notes in its "begun" slot each call it
begins (``_shm``): when it dies, the calls behind the running one provably never began, and
their callers send them to another worker. What it could cost in fairness is bounded here: a call
queues behind another only when no worker is free, no caller waits and the pool cannot grow;
only a call that may (``_waiters.JOIN``: no timeout, not from a host function, not a session's);
never behind a stream (``ALONE``); and only behind a call that began under ``BEHIND_LIMIT`` ago.
Once the running call is older than that, the calls behind it that the worker has not begun are
taken back (``Channel.take_back``, checked every ``BEHIND_LIMIT`` by :class:`Sweeper` while any
wait) and queue again at the head of the queue; and when a worker comes free with no caller
queued while calls wait behind a running one, the oldest of those behind the longest-running
call is taken back to run there. So a call never waits long behind another while a worker could
run it, and calls that wait for one another progress as they would without pipelining.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from snakeden._handle import BUSY, WorkerHandle
from snakeden._protocol import FEATURE_BEGUN
from snakeden._shm import SKIP_RING
from snakeden._stats import Counters
from snakeden._waiters import JOIN

if TYPE_CHECKING:
    from snakeden._checkout import Actions
    from snakeden._events import EventHub

#: Pipelining: a call queues behind a busy worker's only while the call that worker runs began
#: less than this many seconds ago (a long call keeps later ones out of its worker's pipe; they
#: wait for the first worker to come free instead).
BEHIND_LIMIT: Final = 0.01

#: The most calls in flight a pipelined worker takes, whatever ``pipeline`` says: the calls
#: waiting behind its running one must fit the begun slot's ring of ids to skip (62).
MAX_DEPTH: Final = SKIP_RING + 1


class PipelineCheckout:
    """Which busy worker a call may queue behind, and calls sent again after a death."""

    # Provided by Checkout.
    lock: threading.Lock
    clock: Callable[[], float]
    depth: int
    shared: bool
    workers: dict[str, WorkerHandle]
    counters: Counters
    returning: int
    behind: int
    release: Callable[..., Actions | None]
    _settle: Callable[..., Actions | None]
    _drained: Callable[[], bool]

    def _pipeline(self, w: WorkerHandle) -> None:
        """``w`` said HELLO: pipelined if it notes each call it begins. Without that note (a
        Node worker, Ray) a crash could not tell the calls behind from the one running: none
        queue. A worker serving several calls at once (HELLO concurrency) keeps its own depth."""
        if w.depth == 1 and self.depth > 1 and FEATURE_BEGUN in w.features:
            w.depth = min(self.depth, MAX_DEPTH)
            w.pipelined = True
        self.shared = self.shared or w.depth > 1

    def _least_loaded(self, mode: int) -> WorkerHandle | None:
        """With pipelining or workers serving several calls at once: the busy in-service worker
        with the fewest calls in flight that may take one more of ``mode``."""
        best = None
        for w in self.workers.values():
            if (
                w.state is BUSY
                and w.inflight < w.depth
                and not w.retiring
                and not w.must_retire
                and (best is None or w.inflight < best.inflight)
                and (not w.pipelined or self._may_queue(w, mode))
            ):
                best = w
        return best

    def _may_queue(self, w: WorkerHandle, mode: int) -> bool:
        """Whether a call of ``mode`` may wait behind the call pipelined worker ``w`` runs: one
        that may (JOIN), behind one that allows it (not solo) and began not long ago.

        Not also "after a call that ran short", as ``SyncPool``'s lanes ask: here the host's
        view of a call's run includes its own delays in handling replies, which with thousands
        of calls in flight reach 10 ms and turned pipelining off when it paid most (measured:
        13-20.6k against 23-29k calls/s)."""
        return mode == JOIN and not w.solo and self.clock() - w.leased_at < BEHIND_LIMIT

    def _with_calls_behind(self) -> list[WorkerHandle]:
        """Pipelined workers in service with calls waiting behind the one they run."""
        return [
            w for w in self.workers.values() if w.pipelined and w.inflight > 1 and w.state is BUSY
        ]

    def _stuck(self) -> WorkerHandle | None:
        """Of those, the one whose running call began the longest ago (a worker just came
        free: one of the calls behind it should run there)."""
        return min(self._with_calls_behind(), key=lambda w: w.leased_at, default=None)

    def stuck(self) -> list[WorkerHandle]:
        """The pipelined workers in service whose running call, with calls behind it, began
        ``BEHIND_LIMIT`` ago or more."""
        with self.lock:
            old = self.clock() - BEHIND_LIMIT
            return [w for w in self._with_calls_behind() if w.leased_at <= old]

    def resend(self, w: WorkerHandle, *, taken_back: bool = False) -> Actions | None:
        """Give back the lease of a call that never reached ``w`` (dead), or (``taken_back``)
        that ``w`` was told to skip: its caller sends it again at once (:meth:`returned`), and
        the pool is not drained meanwhile."""
        with self.lock:
            if taken_back:
                self.counters.calls_taken_back += 1
            else:
                self.counters.calls_redispatched += 1
            self.returning += 1
            return self._settle(w, in_order=not taken_back)

    def returned(self) -> bool:
        """The call given back by :meth:`resend` is queued or leased again (or refused).
        Returns whether the pool is now drained."""
        with self.lock:
            self.returning -= 1
            return self._drained()


class Sweeper:
    """On the pool's loop: while calls wait behind others, every ``BEHIND_LIMIT`` take back
    those behind a call that has run that long (their callers queue again, first in line)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, checkout: PipelineCheckout, events: EventHub
    ) -> None:
        self.loop = loop
        self.checkout = checkout
        self.events = events
        self._armed = False

    def watch(self) -> None:
        """A call was just sent behind another: sweep in ``BEHIND_LIMIT`` (if not due already)."""
        if not self._armed:
            self._armed = True
            self.loop.call_later(BEHIND_LIMIT, self._sweep)

    def _sweep(self) -> None:
        self._armed = False
        for w in self.checkout.stuck():
            take_back(w, self.events, every=True)
        if self.checkout.behind:
            self.watch()


def take_back(w: WorkerHandle, events: EventHub, *, every: bool = False) -> None:
    """Take back the oldest call (or ``every`` call) waiting behind ``w``'s running one that
    the worker has not begun (on the loop)."""
    n = w.channel.take_back(every=every) if w.channel is not None else 0
    if n:
        events.emit("taken_back", w, None, detail=f"{n} call(s)")
