"""``Pool.stats()``: the checkout's bookkeeping read out as a :class:`PoolStats`."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from snakeden._handle import BUSY, IDLE, STARTING, STOPPING
from snakeden._stats import Percentiles, PoolStats

if TYPE_CHECKING:
    from snakeden._checkout import Checkout

_LIVE = (STARTING, IDLE, BUSY)


def snapshot(c: Checkout) -> PoolStats:
    """The checkout's numbers now, read under its lock."""
    with c.lock:
        k = c.counters
        ws = list(c.workers.values())
        return PoolStats(
            state=c.phase.value,
            workers=sum(1 for w in ws if w.state in _LIVE),
            stopping=sum(1 for w in ws if w.state is STOPPING),
            starting=sum(1 for w in ws if w.state is STARTING),
            ready=len(c.idle),
            busy=sum(1 for w in ws if w.inflight > 0),
            in_flight=c.leased,
            queued=len(c.waiters) + sum(len(q) for q in c.pinned.values()),
            calls_ok=k.calls_ok,
            calls_failed=k.calls_failed,
            calls_timed_out=k.calls_timed_out,
            calls_crashed=k.calls_crashed,
            calls_rejected=k.calls_rejected,
            calls_cancelled=k.calls_cancelled,
            calls_redispatched=k.calls_redispatched,
            calls_taken_back=k.calls_taken_back,
            restarts=k.restarts,
            recycled=k.recycled,
            start_failures=k.start_failures,
            checkout_wait=Percentiles.of(list(k.checkout_wait)),
            call_latency=Percentiles.of(list(k.call_latency)),
            slots=sum(w.depth for w in ws if w.state in (IDLE, BUSY)),
            sessions=len(c.sessions),
            sessions_by_worker=c.session_counts(),
            nodes=dict(
                Counter(w.proc.node for w in ws if w.proc and w.proc.node and w.state in _LIVE)
            ),
        )
