"""The checkout as plain state, driven step by step with no process and an injected clock.

Every edge of a worker's state diagram (``_handle.py``) is taken here at least once, and each
decision the supervisor acts on (wake, retire, replace, grow, shrink, ping, memory, drain) is
checked as the value a step returns.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from snakeden import PoolClosed, PoolSaturated
from snakeden._checkout import Actions, Checkout, Phase
from snakeden._config import PoolConfig
from snakeden._handle import BadTransition, Cause, WorkerHandle, WState
from snakeden._protocol import FEATURE_BEGUN
from snakeden._waiters import FREE, JOIN, AsyncWaiter, ThreadWaiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_n = 0


def pool(size: int = 2, *, depth: int = 1, **options: Any) -> tuple[Checkout, Clock]:
    clock = Clock()
    co = Checkout(PoolConfig(size=size, clock=clock, **options), depth=depth)
    co.phase = Phase.RUNNING
    return co, clock


def start(
    co: Checkout,
    n: int = 1,
    *,
    max_calls: int | None = None,
    features: tuple[str, ...] = (FEATURE_BEGUN,),
) -> list[WorkerHandle]:
    """Register and ready ``n`` workers, as the supervisor does after each HELLO (by default
    a Python worker's, which notes the calls it begins)."""
    global _n
    out = []
    for _ in range(n):
        _n += 1
        w = WorkerHandle(f"t{_n}", co.clock(), max_calls)
        w.features = features
        co.add(w, scheduled=False)
        assert w.state is WState.STARTING
        in_service, _ = co.ready(w)
        assert in_service
        out.append(w)
    co.check_invariants()
    return out


def take(co: Checkout, mode: int = FREE) -> WorkerHandle:
    got, _ = co.acquire(ThreadWaiter, mode)
    assert isinstance(got, WorkerHandle)
    return got


def queue(co: Checkout, mode: int = FREE) -> ThreadWaiter:
    got, _ = co.acquire(ThreadWaiter, mode)
    assert isinstance(got, ThreadWaiter)
    return got


# --- checkout and release -----------------------------------------------------------------------


def test_lease_and_release_most_recently_used_first() -> None:
    co, _ = pool()
    _a, b = start(co, 2)
    w = take(co)
    assert w is b and w.state is WState.BUSY and co.leased == 1
    assert co.release(w, "ok") is None  # back to idle: nothing for the supervisor to do
    assert w.state is WState.IDLE and w.calls == 1 and co.counters.calls_ok == 1
    assert take(co) is b  # warm caches: the worker just used goes first
    co.check_invariants()
    assert "leased=1" in repr(co)


def test_waiters_are_served_fifo_and_the_lease_passes_straight_on() -> None:
    co, _ = pool(size=1)
    (w,) = start(co)
    assert take(co) is w
    first, second, third = queue(co), queue(co), queue(co)
    assert co.snapshot().queued == 3
    for waiter in (first, second, third):
        act = co.release(w, "ok")
        assert act is not None and act.wake is waiter and waiter.worker is w
        assert w.state is WState.BUSY and co.leased == 1  # never idle in between
        co.check_invariants()
    assert co.release(w, "ok") is None and w.state is WState.IDLE


def test_a_waiter_that_gave_up_is_skipped_and_one_assigned_meanwhile_is_handed_back() -> None:
    co, _ = pool(size=1)
    (w,) = start(co)
    take(co)
    gone, late, served = queue(co), queue(co), queue(co)
    assert co.give_up(gone) == (None, False)
    assert co.counters.calls_rejected == 1  # a queue timeout: never sent
    act = co.release(w, "ok")
    assert act is not None and act.wake is late
    # The caller gives up after the worker was assigned but before it woke: it gets the worker
    # back from give_up and must release it, which passes it on.
    got, _ = co.give_up(late, cancelled=True)
    assert got is w
    act = co.release(w, None)
    assert act is not None and act.wake is served
    co.check_invariants()


def test_async_waiter_cancelled_by_its_task_is_skipped() -> None:
    async def body() -> None:
        co, _ = pool(size=1)
        (w,) = start(co)
        take(co)
        loop = asyncio.get_running_loop()
        got, _ = co.acquire(lambda: AsyncWaiter(loop.create_future()))
        assert isinstance(got, AsyncWaiter)
        got.fut.cancel()  # what task.cancel() does to the future the task awaits
        assert co.release(w, "ok") is None and w.state is WState.IDLE
        assert co.give_up(got, cancelled=True) == (None, False)
        assert co.counters.calls_cancelled == 1 and not co.waiters
        co.check_invariants()

    asyncio.run(body())


def test_saturation_and_refusal_never_queue() -> None:
    co, _ = pool(size=1, max_queue=2)
    start(co)
    take(co)
    queue(co)
    queue(co)
    with pytest.raises(PoolSaturated, match="max_queue=2"):
        co.acquire(ThreadWaiter)
    assert co.counters.calls_rejected == 1 and len(co.waiters) == 2
    failed, busy = co.begin_close(cancel_pending=True)
    assert len(failed) == 2 and busy and co.phase is Phase.CLOSING
    with pytest.raises(PoolClosed):
        co.acquire(ThreadWaiter)


def test_pipelining_shares_the_least_loaded_busy_worker() -> None:
    co, _ = pool(size=2, depth=2)
    start(co, 2)
    a, b = take(co), take(co)
    c = take(co, JOIN)  # no idle worker: shares one
    assert c in (a, b) and c.inflight == 2 and c.pipelined
    d = take(co, JOIN)
    assert d is not c and d.inflight == 2
    assert isinstance(queue(co, JOIN), ThreadWaiter)  # both at depth: queue
    co.check_invariants()


# --- failures and exits -----------------------------------------------------------------------


def test_a_failed_idle_worker_leaves_the_idle_set_at_once_and_is_never_handed_out() -> None:
    co, _ = pool(size=2)
    a, b = start(co, 2)
    assert co.fail(b, Cause.PROTOCOL)
    assert b.state is WState.STOPPING and b.cause is Cause.PROTOCOL
    assert not co.fail(b, Cause.CRASHED)  # the first cause wins
    assert take(co) is a
    assert isinstance(queue(co), ThreadWaiter)
    co.check_invariants()


def test_a_worker_failed_while_leased_is_not_returned_and_its_fds_close_on_release() -> None:
    co, _ = pool(size=1)
    (w,) = start(co)
    take(co)
    co.fail(w, Cause.TIMEOUT)
    assert w.state is WState.STOPPING and w.inflight == 1
    close_now, unplanned = co.exited(w)  # the kill landed while the caller still holds it
    assert (close_now, unplanned) == (False, True) and w.close_on_release
    assert w.state is WState.DEAD and w.cause is Cause.TIMEOUT and co.counters.restarts == 1
    act = co.release(w, "timeout")
    assert act is not None and act.close_fds is w and w.id not in co.workers
    assert co.counters.calls_timed_out == 1
    co.check_invariants()


def test_exit_of_an_idle_worker_is_unplanned_and_of_a_retired_one_planned() -> None:
    co, _ = pool(size=2)
    a, b = start(co, 2)
    assert co.exited(a) == (True, True)
    assert a.state is WState.DEAD and a.cause is Cause.EXITED and a not in co.idle
    assert co.take_idle(b, stop=Cause.RETIRED)
    assert co.exited(b) == (True, False) and co.counters.recycled == 1
    assert not co.workers
    co.check_invariants()


def test_exits_while_closing_are_replaced_only_for_waiters() -> None:
    co, _ = pool(size=1)
    (w,) = start(co)
    co.begin_close(cancel_pending=False)
    assert co.exited(w) == (True, False)
    assert not co.may_start()


def test_a_worker_dead_right_after_its_hello_is_replaced_not_put_in_service() -> None:
    co, _ = pool(size=1)
    w = WorkerHandle("early", co.clock(), None)
    co.add(w, scheduled=False)
    assert co.exited(w) == (True, False)  # seen before the start path resumed: not its to say
    in_service, act = co.ready(w)
    assert not in_service and act is not None and act.ensure_capacity
    assert co.counters.restarts == 1 and not co.workers
    assert co.plan_capacity() == [None]
    co.check_invariants()


def test_a_start_failure_counts_towards_broken_and_backoff_doubles() -> None:
    co, _ = pool(size=1, restart_backoff=0.1, restart_backoff_max=0.3, max_start_failures=3)
    assert co.backoff() == 0.0
    delays = []
    for i in range(3):
        w = WorkerHandle(f"f{i}", co.clock(), None)
        co.add(w, scheduled=False)
        broken = co.start_failed(w)
        delays.append(co.backoff())
        assert broken == (i == 2)
    assert delays == [0.1, 0.2, 0.3]
    assert co.counters.start_failures == 3 and not co.workers
    start(co)  # one success resets the run
    assert co.backoff() == 0.0


def test_illegal_moves_are_refused() -> None:
    w = WorkerHandle("x", 0.0, None)
    with pytest.raises(BadTransition):
        w.move(WState.STARTING)
    w.move(WState.STOPPING, Cause.CLOSED)
    with pytest.raises(BadTransition, match="stopping -> idle"):
        w.move(WState.IDLE)
    w.move(WState.DEAD)
    assert w.cause is Cause.CLOSED
    for to in WState:
        with pytest.raises(BadTransition):
            w.move(to)


# --- capacity: replacement, recycling, growth ----------------------------------------------------


def test_capacity_plan_counts_scheduled_starts_once() -> None:
    co, _ = pool(size=3)
    start(co, 1)
    assert co.plan_capacity() == [None, None]
    assert co.plan_capacity() == []  # already scheduled: a back-off must not double it
    w = WorkerHandle("r", co.clock(), None)
    co.add(w, scheduled=True)  # the start takes its scheduled place in the same step
    assert co.scheduled == 1
    co.unschedule()  # the other start gave up (pool closing)
    assert co.scheduled == 0
    co.check_invariants()


def test_recycling_after_max_calls_keeps_capacity_until_the_replacement_is_warm() -> None:
    co, _ = pool(size=1)
    (old,) = start(co, max_calls=3)
    for _ in range(2):
        take(co)
        act = co.release(old, "ok")
    assert old.retiring  # one call before its limit: the replacement starts now
    assert act is not None and act.ensure_capacity
    assert co.plan_capacity() == [old] and old.replacement_scheduled
    new = WorkerHandle("new", co.clock(), None)
    co.add(new, scheduled=True)
    old.replacing = new
    take(co)
    assert co.release(old, "ok") is None  # at its limit, but the replacement is still starting
    assert old.state is WState.IDLE
    co.ready(new)
    assert co.take_idle(old, stop=Cause.RETIRED)  # what the supervisor does once it is warm
    assert old.state is WState.STOPPING and co.counters.recycled == 1
    assert take(co) is new
    co.check_invariants()


def test_a_busy_worker_past_its_limit_retires_at_release() -> None:
    co, _ = pool(size=1)
    (w,) = start(co, max_calls=1)
    take(co)
    waiter_behind = queue(co)
    w.replacing = WorkerHandle("ready-one", 0.0, None)
    w.replacing.state = WState.IDLE
    act = co.release(w, "ok")
    assert act is not None and act.retire is w and act.wake is None
    assert w.state is WState.STOPPING and w.cause is Cause.RETIRED
    assert co.waiters[0] is waiter_behind  # still queued, for the replacement
    co.check_invariants()


def test_never_past_twice_the_limit_even_without_a_warm_replacement() -> None:
    co, _ = pool(size=1)
    (w,) = start(co, max_calls=2)
    for _ in range(3):
        take(co)
        co.release(w, "ok")
    take(co)
    act = co.release(w, "ok")
    assert act is not None and act.retire is w and w.calls == 4


def test_growth_when_callers_queue_up_to_max_size() -> None:
    co, _ = pool(size=1, max_size=2)
    start(co)
    take(co)
    _got, grow = co.acquire(ThreadWaiter)
    assert grow
    assert co.plan_growth() and co.scheduled == 1
    _, grow = co.acquire(ThreadWaiter)
    assert not grow  # one start already covers one more waiter... and max_size is reached
    assert not co.plan_growth()


def test_no_growth_without_max_size() -> None:
    co, _ = pool(size=1)
    start(co)
    take(co)
    assert co.acquire(ThreadWaiter)[1] is False


# --- maintenance ---------------------------------------------------------------------------------


def test_idle_workers_above_size_shrink_and_pings_do_not_count_as_use() -> None:
    co, clock = pool(size=1, max_size=3, idle_timeout=30.0, health_interval=10.0)
    a, _b, _c = start(co, 3)
    clock.now += 11
    assert sorted(what for _, what in co.due(clock())) == ["ping", "ping", "ping"]
    assert co.take_idle(a)  # leased for a ping
    assert co.release(a, None) is None
    clock.now += 20  # 31 s since any call
    due = co.due(clock())
    assert sorted(what for _, what in due) == ["ping", "shrink", "shrink"]
    for w, what in due:
        if what == "shrink":
            assert co.take_idle(w, stop=Cause.SHRUNK)
    assert co.snapshot().workers == 1 and co.snapshot().stopping == 2
    co.check_invariants()


def test_max_age_asks_for_recycling_once() -> None:
    co, clock = pool(size=1, max_age=60.0, health_interval=None)
    (w,) = start(co)
    clock.now += 61
    assert co.due(clock()) == [(w, "age")]
    act = co.mark_retiring(w)
    assert act.ensure_capacity and w.retiring and w.state is WState.IDLE
    assert co.due(clock()) == []


def test_memory_is_checked_between_calls_even_when_callers_wait() -> None:
    co, clock = pool(size=1, max_memory=1 << 20, memory_check_interval=2.0)
    (w,) = start(co)
    clock.now += 2.5  # checked when it became ready; due again now
    take(co)
    queue(co)
    act = co.release(w, "ok")
    assert act is not None and act.wake is not None and act.check_memory is w
    act = co.release(w, "ok")
    assert act is None or act.check_memory is None  # not due again yet
    clock.now += 2.5
    take(co)
    assert co.due(clock()) == [(w, "memory")]  # busy workers too, from the maintenance loop
    act = co.mark_retiring(w, now=True)
    assert w.must_retire and act.retire is None  # busy: leaves at its release
    act2 = co.release(w, "ok")
    assert act2 is not None and act2.retire is w
    co.check_invariants()


def test_an_idle_worker_far_over_memory_leaves_at_once() -> None:
    co, _ = pool(size=1, max_memory=1 << 20)
    (w,) = start(co)
    act = co.mark_retiring(w, now=True)
    assert act.retire is w and w.state is WState.STOPPING and co.counters.recycled == 1


# --- the pool as a whole ------------------------------------------------------------------------


def test_drain_is_reported_by_the_last_release() -> None:
    co, _ = pool(size=1)
    (w,) = start(co)
    take(co)
    waiter = queue(co)
    _, busy = co.begin_close(cancel_pending=False)
    assert busy
    act = co.release(w, "ok")
    assert act is not None and act.wake is waiter and not act.drained
    act = co.release(w, "ok")
    assert act == Actions(drained=True)
    assert co.stop() == []
    co.check_invariants()


def test_broken_refuses_every_call_and_fails_waiters() -> None:
    co, _ = pool(size=1)
    start(co)
    take(co)
    waiter = queue(co)
    err = RuntimeError("broken")
    assert co.break_(err) == [waiter]
    assert co.phase is Phase.BROKEN
    with pytest.raises(RuntimeError, match="broken"):
        co.acquire(ThreadWaiter)


def test_invariants_catch_a_leaked_lease() -> None:
    co, _ = pool(size=1)
    (_w,) = start(co)
    take(co)
    co.leased += 1  # what the hand-off race did: a lease nobody holds
    with pytest.raises(AssertionError, match="leased=2 but workers hold 1"):
        co.check_invariants()


def test_snapshot_counts_states() -> None:
    co, _ = pool(size=3)
    a, _b, _c = start(co, 3)
    take(co)
    co.fail(a, Cause.UNHEALTHY)
    s = co.snapshot()
    assert (s.workers, s.ready, s.busy, s.stopping, s.in_flight) == (2, 1, 1, 1, 1)
    assert s.state == "running" and s.calls_redispatched == 0


def test_the_remaining_edges_hello_to_a_waiter_stop_while_starting_death_while_leased() -> None:
    co, _ = pool(size=1)
    (w,) = start(co)
    take(co)
    waiter = queue(co)
    new = WorkerHandle("hello-to-waiter", co.clock(), None)
    co.add(new, scheduled=False)
    in_service, act = co.ready(new)  # STARTING -> BUSY: straight to the caller waiting
    assert in_service and act is not None and act.wake is waiter and new.state is WState.BUSY
    stopped = WorkerHandle("stopped-while-starting", co.clock(), None)
    co.add(stopped, scheduled=False)
    assert co.fail(stopped, Cause.CLOSED)  # STARTING -> STOPPING (close() during start-up)
    assert co.ready(stopped) == (False, None)
    assert co.exited(w) == (False, True)  # BUSY -> DEAD: died under its caller
    assert w.state is WState.DEAD and w.close_on_release
    act = co.release(w, "crashed")
    assert act is not None and act.close_fds is w
    co.check_invariants()
