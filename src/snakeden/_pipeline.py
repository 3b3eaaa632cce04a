"""Pipelining, the checkout's part of it (mixed into :class:`~snakeden._checkout.Checkout`).

A pipelined worker runs its calls one at a time and holds up to ``depth`` (the pool's
``pipeline``) in flight: the others wait in its pipe, behind the running one. That costs neither
crash isolation nor timeouts because such a worker notes in its "begun" slot each call it
begins (``_shm``): when it dies, the calls behind the running one provably never began, and
their callers send them to another worker. What it could cost in fairness is bounded here: a call
queues behind another only when no worker is free, no caller waits and the pool cannot grow;
only a call that may (``_waiters.JOIN``: no timeout, not from a host function, not a session's);
never behind a stream (``ALONE``); and only behind a call that began under ``BEHIND_LIMIT`` ago.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from snakeden._handle import BUSY, WorkerHandle
from snakeden._protocol import FEATURE_BEGUN
from snakeden._stats import Counters
from snakeden._waiters import JOIN

if TYPE_CHECKING:
    from snakeden._checkout import Actions

#: Pipelining: a call queues behind a busy worker's only while the call that worker runs began
#: less than this many seconds ago (a long call keeps later ones out of its worker's pipe; they
#: wait for the first worker to come free instead).
BEHIND_LIMIT: Final = 0.01


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
    release: Callable[..., Actions | None]
    _drained: Callable[[], bool]

    def _pipeline(self, w: WorkerHandle) -> None:
        """``w`` said HELLO: pipelined if it notes each call it begins. Without that note (a
        Node worker, Ray) a crash could not tell the calls behind from the one running: none
        queue. A worker serving several calls at once (HELLO concurrency) keeps its own depth."""
        if w.depth == 1 and self.depth > 1 and FEATURE_BEGUN in w.features:
            w.depth = self.depth
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
        that may (JOIN), behind one that allows it (not solo) and began not long ago."""
        return mode == JOIN and not w.solo and self.clock() - w.leased_at < BEHIND_LIMIT

    def resend(self, w: WorkerHandle) -> Actions | None:
        """Give back the lease of a call that never reached ``w`` (dead): its caller sends it
        again at once (:meth:`returned`), and the pool is not drained meanwhile."""
        with self.lock:
            self.counters.calls_redispatched += 1
            self.returning += 1
        return self.release(w, None)

    def returned(self) -> bool:
        """The call given back by :meth:`resend` is queued or leased again (or refused).
        Returns whether the pool is now drained."""
        with self.lock:
            self.returning -= 1
            return self._drained()
