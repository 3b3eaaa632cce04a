"""Pipelining in the checkout, as plain state with an injected clock (no process): which calls
may wait behind a busy worker's call, and what a release, a death or a drain then decides."""

from __future__ import annotations

from snakeden._checkout import Phase
from snakeden._handle import Cause, WState
from snakeden._pipeline import BEHIND_LIMIT
from snakeden._sessions import SessionRecord
from snakeden._waiters import ALONE, FREE, JOIN, ThreadWaiter
from tests.test_checkout import pool, queue, start, take


def test_a_call_joins_a_busy_worker_only_when_none_is_free_and_none_waits() -> None:
    co, _ = pool(size=2, depth=3)
    a, b = start(co, 2)
    assert a.pipelined and b.pipelined and a.depth == 3
    first, second = take(co, JOIN), take(co, JOIN)
    assert {first, second} == {a, b}  # free workers first, whatever the mode
    third = take(co, JOIN)
    assert third.inflight == 2 and co.leased == 3
    fourth = take(co, JOIN)
    assert fourth is not third and fourth.inflight == 2  # the least loaded
    take(co, JOIN), take(co, JOIN)
    waiter = queue(co, JOIN)  # both at depth
    # Once a caller waits, later ones queue behind it (FIFO), even with room in a pipe.
    assert co.release(a, "ok") is not None and waiter.worker is a
    co.check_invariants()


def test_calls_that_may_not_queue_behind_another_wait_for_a_free_worker() -> None:
    co, _ = pool(size=1, depth=4)
    (w,) = start(co)
    take(co, JOIN)
    free = queue(co, FREE)  # a call with a timeout, a map lane
    later = queue(co, JOIN)  # behind the waiter: FIFO
    assert w.inflight == 1 and len(co.waiters) == 2
    act = co.release(w, "ok")
    assert act is not None and act.wake is free and free.worker is w
    assert later.worker is None  # the worker is not free again yet
    co.check_invariants()


def test_nothing_queues_behind_a_long_call() -> None:
    co, clock = pool(size=1, depth=4)
    (w,) = start(co)
    take(co, JOIN)
    clock.now += BEHIND_LIMIT / 2
    assert take(co, JOIN) is w  # the running call began just now
    clock.now += BEHIND_LIMIT
    waiter = queue(co, JOIN)  # it has run long: a call waits for a free worker instead
    # The first call ends: the second begins now, and the waiter may queue behind it.
    act = co.release(w, "ok")
    assert act is not None and act.wake is waiter and w.inflight == 2
    co.check_invariants()


def test_nothing_queues_behind_a_stream() -> None:
    co, _ = pool(size=1, depth=4)
    (w,) = start(co)
    assert take(co, ALONE) is w and w.solo
    queue(co, JOIN)
    co.check_invariants()
    act = co.release(w, "ok")
    assert act is not None and act.wake is not None and w.inflight == 1 and not w.solo


def test_a_free_waiter_gets_a_pipelined_worker_only_once_its_pipe_is_empty() -> None:
    co, _ = pool(size=1, depth=4)
    (w,) = start(co)
    take(co, JOIN), take(co, JOIN)
    stream = queue(co, ALONE)
    assert co.release(w, "ok") is None and stream.worker is None  # one call still in its pipe
    act = co.release(w, "ok")
    assert act is not None and act.wake is stream and w.solo and w.inflight == 1
    co.check_invariants()


def test_workers_that_do_not_note_what_they_begin_are_not_pipelined() -> None:
    co, _ = pool(size=1, depth=4)
    (w,) = start(co, features=())  # a Node worker, a worker on Ray
    assert not w.pipelined and w.depth == 1
    take(co, JOIN)
    queue(co, JOIN)
    co.check_invariants()


def test_a_pool_that_may_grow_starts_a_worker_rather_than_queue_a_call_behind_one() -> None:
    co, _ = pool(size=1, depth=4, max_size=2)
    start(co)
    take(co, JOIN)
    got, grow = co.acquire(ThreadWaiter, JOIN)
    assert isinstance(got, ThreadWaiter) and grow
    co.check_invariants()


def test_a_session_call_never_queues_behind_its_home() -> None:
    co, _ = pool(size=1, depth=4)
    (w,) = start(co, features=("begun", "session"))
    rec = co.open_session("wait", None)
    got, _ = co.acquire_session(rec, ThreadWaiter)
    assert got is w and isinstance(rec, SessionRecord)
    co.session_on(rec, w)
    got, _ = co.acquire_session(rec, ThreadWaiter)
    assert isinstance(got, ThreadWaiter) and w.inflight == 1
    co.check_invariants()


def test_calls_sent_again_keep_a_draining_pool_open_and_get_a_replacement() -> None:
    co, _ = pool(size=1, depth=4)
    (w,) = start(co)
    take(co, JOIN), take(co, JOIN)
    co.begin_close(cancel_pending=False)
    assert co.fail(w, Cause.CRASHED)
    # The worker is gone before its callers saw it: the one behind will be sent again.
    close_now, unplanned = co.exited(w)
    assert not close_now and unplanned and co.may_start()
    act = co.release(w, "crashed")  # the running call fails
    assert act is None or not act.drained
    act = co.resend(w)  # the call behind it never began: given back to be sent again
    assert act is None or not act.drained
    assert not co._drained()  # its caller takes a worker next
    got, _ = co.acquire(ThreadWaiter, JOIN, again=True)  # accepted although closing
    assert isinstance(got, ThreadWaiter) and not co.returned()
    assert co.counters.calls_redispatched == 1
    (r,) = start(co)
    assert got.worker is r and r.state is WState.BUSY
    act = co.release(r, "ok")
    assert act is not None and act.drained and co.phase is Phase.CLOSING
    co.check_invariants()
