"""Session affinity in the checkout, as plain state: no process, an injected clock.

Each affinity mode with its home idle, busy and gone; pinned callers served before the FIFO
queue and failed (never re-routed) when their worker leaves; expiry; the cap; recycling and
shrinking held for open sessions; the outbox of a blocking pool.
"""

from __future__ import annotations

from typing import Any

import pytest

from snakeden import (
    SessionBusy,
    SessionClosed,
    SessionExpired,
    SessionLimit,
    SessionLost,
    SessionsUnsupported,
)
from snakeden._checkout import Checkout
from snakeden._handle import Cause, WorkerHandle, WState
from snakeden._sessions import SessionRecord
from snakeden._waiters import ThreadWaiter
from tests.test_checkout import pool, queue, take

_n = 0


def start(co: Checkout, n: int = 1, *, max_calls: int | None = None) -> list[WorkerHandle]:
    """Ready ``n`` workers whose HELLO lists the "session" feature."""
    global _n
    out = []
    for _ in range(n):
        _n += 1
        w = WorkerHandle(f"s{_n}", co.clock(), max_calls)
        w.features = ("session",)
        co.add(w, scheduled=False)
        assert co.ready(w)[0]
        out.append(w)
    return out


def lease(co: Checkout, rec: SessionRecord) -> WorkerHandle:
    got, _ = co.acquire_session(rec, ThreadWaiter)
    assert isinstance(got, WorkerHandle)
    co.session_on(rec, got)
    return got


def wait(co: Checkout, rec: SessionRecord) -> ThreadWaiter:
    got, _ = co.acquire_session(rec, ThreadWaiter)
    assert isinstance(got, ThreadWaiter)
    return got


def sessions_pool(size: int = 2, **options: Any) -> tuple[Checkout, Any, list[WorkerHandle]]:
    co, clock = pool(size=size, **options)
    return co, clock, start(co, size)


def test_sessions_spread_over_the_workers_with_the_fewest() -> None:
    co, _, (a, b) = sessions_pool()
    recs = [co.open_session("wait", None) for _ in range(4)]
    assert {r.home for r in recs} == {a, b} and a.sessions == b.sessions == 2
    assert len({r.id for r in recs}) == 4 and all(r.id > 0 for r in recs)
    assert co.snapshot().sessions == 4 and co.snapshot().sessions_by_worker == {a.id: 2, b.id: 2}
    co.check_invariants()


def test_the_first_call_opens_the_session_on_its_worker_once() -> None:
    co, _, _ = sessions_pool()
    rec = co.open_session("wait", None)
    w = take_home(co, rec)
    assert rec.opened == {w}
    co.release(w, "ok")
    got, _ = co.acquire_session(rec, ThreadWaiter)
    assert got is w and co.session_on(rec, w) is False  # already open there
    co.release(w, "ok")
    co.check_invariants()


def take_home(co: Checkout, rec: SessionRecord) -> WorkerHandle:
    got, _ = co.acquire_session(rec, ThreadWaiter)
    assert got is rec.home
    assert isinstance(got, WorkerHandle) and co.session_on(rec, got) is True
    return got


def test_wait_queues_for_the_home_and_is_served_before_the_fifo_queue() -> None:
    co, _, (a, b) = sessions_pool()
    rec = co.open_session("wait", None)
    home = take_home(co, rec)
    other = b if home is a else a
    assert take(co) is other  # a plain call takes the other worker
    plain = queue(co)  # queued first, FIFO
    pinned = wait(co, rec)
    assert co.snapshot().queued == 2
    act = co.release(other, "ok")  # the other worker goes to the plain caller, not the pinned
    assert act is not None and act.wake is plain
    act = co.release(home, "ok")
    assert act is not None and act.wake is pinned and pinned.worker is home
    co.release(home, "ok")
    co.release(other, "ok")
    co.check_invariants()


def test_fail_raises_session_busy_at_once_and_queues_nothing() -> None:
    co, _, _ = sessions_pool()
    rec = co.open_session("fail", None)
    home = take_home(co, rec)
    with pytest.raises(SessionBusy, match="affinity is 'fail'"):
        co.acquire_session(rec, ThreadWaiter)
    assert co.snapshot().queued == 0
    co.release(home, "ok")
    assert lease(co, rec) is home  # free again: served
    co.release(home, "ok")


def test_hint_runs_elsewhere_when_the_home_is_busy_and_opens_there_too() -> None:
    co, _, (a, b) = sessions_pool()
    rec = co.open_session("hint", None)
    home = take_home(co, rec)
    other = b if home is a else a
    got, _ = co.acquire_session(rec, ThreadWaiter)
    assert got is other
    assert co.session_on(rec, other) is True  # its own copy of the state, opened there
    assert rec.home is home and rec.opened == {home, other}
    # Both busy: a hint call queues like any call, in the FIFO queue.
    waiter = wait(co, rec)
    assert co.waiters[0] is waiter
    co.release(home, "ok")
    co.release(other, "ok")
    co.release(home, None)
    assert sorted(w.id for w in co.close_session(rec)) == sorted([a.id, b.id])
    co.check_invariants()


def test_strict_sessions_are_lost_with_their_worker_and_pinned_callers_fail() -> None:
    co, _, _ = sessions_pool()
    rec = co.open_session("wait", None)
    home = take_home(co, rec)
    pinned = wait(co, rec)
    co.fail(home, Cause.CRASHED)
    assert isinstance(pinned.error, SessionLost) and "crashed" in str(pinned.error)
    co.release(home, "crashed")
    with pytest.raises(SessionLost, match="left service"):
        co.acquire_session(rec, ThreadWaiter)
    with pytest.raises(SessionLost):  # for good, not just once
        co.session_begin(rec)
    assert co.snapshot().sessions == 0  # lost: no longer counts against max_sessions
    assert co.close_session(rec) == []  # its worker is gone: nothing to tell
    co.check_invariants()


def test_a_session_whose_worker_dies_before_its_first_call_moves_losing_nothing() -> None:
    co, _, (a, b) = sessions_pool()
    rec = co.open_session("wait", None)
    first = rec.home
    assert first is not None and co.fail(first, Cause.CRASHED)
    got = lease(co, rec)  # no state was ever sent there: strict, yet not lost
    assert got is (b if first is a else a) and rec.home is got and got.sessions == 1
    co.release(got, "ok")
    co.check_invariants()


def test_a_hint_session_moves_to_the_next_worker_that_serves_it() -> None:
    co, _, (a, b) = sessions_pool()
    rec = co.open_session("hint", None)
    home = take_home(co, rec)
    co.release(home, "ok")
    assert co.fail(home, Cause.CRASHED)
    got = lease(co, rec)
    assert got is (b if home is a else a)
    assert rec.home is got and got.sessions == 1 and rec.opened == {got}
    co.release(got, "ok")
    co.check_invariants()


def test_a_session_expires_after_its_ttl_only_when_idle() -> None:
    co, clock, _ = sessions_pool()
    rec = co.open_session("wait", 10.0)
    idle = co.open_session("wait", 10.0)
    forever = co.open_session("wait", None)
    co.session_begin(rec)  # a call under way: never expired meanwhile
    clock.now += 11
    assert co.expire_sessions(clock()) == [idle]
    co.session_done(rec)
    with pytest.raises(SessionExpired, match=r"ttl of 10\.0s"):
        co.session_begin(idle)
    clock.now += 5
    co.session_begin(rec)  # used 5 s ago: still alive
    co.session_done(rec)
    clock.now += 11
    with pytest.raises(SessionExpired):
        co.session_begin(rec)
    assert forever.ended is None
    for r in (rec, idle, forever):
        co.close_session(r)
    assert co.snapshot().sessions == 0
    co.check_invariants()


def test_closed_sessions_refuse_calls_and_free_their_place_under_the_cap() -> None:
    co, _, _ = sessions_pool(max_sessions=2)
    first = co.open_session("wait", None)
    co.open_session("wait", None)
    with pytest.raises(SessionLimit, match="max_sessions=2"):
        co.open_session("wait", None)
    home = take_home(co, first)
    co.release(home, "ok")
    assert co.close_session(first) == [home]
    assert co.close_session(first) == []  # closing twice tells the worker once
    with pytest.raises(SessionClosed):
        co.session_begin(first)
    co.open_session("wait", None)  # its place is free again
    co.check_invariants()


def test_a_worker_without_the_feature_refuses_sessions() -> None:
    co, _ = pool(size=1)
    w = WorkerHandle("node", co.clock(), None)
    co.add(w, scheduled=False)
    co.ready(w)
    with pytest.raises(SessionsUnsupported, match="'session' feature"):
        co.open_session("wait", None)


def test_a_pinned_caller_that_gives_up_leaves_its_queue() -> None:
    co, _, _ = sessions_pool()
    rec = co.open_session("wait", None)
    home = take_home(co, rec)
    pinned = wait(co, rec)
    assert co.give_up(pinned) == (None, False)
    assert not co.pinned
    assert co.release(home, "ok") is None and home.state is WState.IDLE
    co.check_invariants()


def test_close_fails_pinned_callers_when_cancelling_pending() -> None:
    co, _, _ = sessions_pool()
    rec = co.open_session("wait", None)
    take_home(co, rec)
    pinned = wait(co, rec)
    failed, busy = co.begin_close(cancel_pending=True)
    assert failed == [pinned] and busy and not co.pinned


def test_recycling_waits_for_open_sessions_up_to_session_hold() -> None:
    co, clock = pool(size=1, session_hold=30.0, health_interval=None)
    (w,) = start(co, max_calls=1)
    rec = co.open_session("wait", None)
    take_home(co, rec)
    w.replacing = WorkerHandle("ready-one", 0.0, None)
    w.replacing.state = WState.IDLE
    assert co.release(w, "ok") is None  # past max_calls, but it holds a session
    assert w.state is WState.IDLE and w.held_since == clock()
    assert not co.take_idle(w, stop=Cause.RETIRED)  # the supervisor's retire: held too
    assert co.due(clock()) == []
    clock.now += 31
    assert co.due(clock()) == [(w, "retire")]
    assert co.take_idle(w, stop=Cause.RETIRED)
    with pytest.raises(SessionLost, match="retired"):
        co.session_begin(rec)
    co.close_session(rec)


def test_a_held_worker_retires_once_its_sessions_close() -> None:
    co, clock = pool(size=1, session_hold=None, health_interval=None)  # hold: for ever
    (w,) = start(co, max_calls=1)
    rec = co.open_session("wait", None)
    take_home(co, rec)
    w.replacing = WorkerHandle("ready-one", 0.0, None)
    w.replacing.state = WState.IDLE
    co.release(w, "ok")
    clock.now += 10_000
    assert co.due(clock()) == []
    co.close_session(rec)
    assert co.due(clock()) == [(w, "retire")]


def test_shrinking_passes_by_workers_that_hold_sessions() -> None:
    co, clock = pool(size=1, max_size=2, idle_timeout=30.0, health_interval=None)
    a, b = start(co, 2)
    rec = co.open_session("wait", None)
    clock.now += 31
    due = co.due(clock())
    holder = rec.home
    assert due == [(a if holder is b else b, "shrink")]
    assert holder is not None and not co.take_idle(holder, stop=Cause.SHRUNK)


def test_a_close_for_a_busy_worker_waits_in_its_outbox_for_a_lease_of_its_own() -> None:
    co, _, _ = sessions_pool()
    rec = co.open_session("wait", None)
    home = take_home(co, rec)
    assert co.close_session(rec) == [home]
    assert co.post_close(home, b"close") is False  # busy: queued
    act = co.release(home, "ok")
    assert act is not None and act.flush is home and home.inflight == 1  # leased on to flush
    assert co.take_outbox(home) == b"close"
    assert co.release(home, None) is None and home.state is WState.IDLE
    assert co.post_close(home, b"again") is True  # idle: leased to the caller at once
    assert co.take_outbox(home) == b"again"
    co.release(home, None)
    co.check_invariants()
