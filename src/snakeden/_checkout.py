"""Checkout as plain state: who holds which worker, who waits, and what the pool should do next.

Nothing here does I/O, starts a task, or calls back into the pool. Each step changes state under
one lock and returns what should happen next (:class:`Actions`: wake this waiter, retire that
worker, start replacements, check a worker's memory); the supervisor carries that out afterwards,
outside the lock, the way httpcore's pool assigns connections in a synchronous step and only
then does I/O. That keeps every decision testable without a process (``tests/test_checkout.py``
drives it step by step with an injected clock) and keeps the lock off every system call.

Callers run on any thread (``SyncPool``) or on the loop (``Pool``); the supervisor on the loop.
Every worker state change goes through :meth:`WorkerHandle.move` in a method of this class.
The queued callers themselves (:class:`AsyncWaiter`, :class:`ThreadWaiter`) are in ``_waiters``.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from snakeden._config import PoolConfig
from snakeden._errors import PoolClosed, PoolSaturated
from snakeden._handle import BUSY, DEAD, IDLE, STARTING, STOPPING, Cause, WorkerHandle
from snakeden._invariants import check_invariants
from snakeden._pipeline import PipelineCheckout
from snakeden._sessions import SessionCheckout
from snakeden._snapshot import snapshot
from snakeden._stats import Counters, Outcome, PoolStats
from snakeden._waiters import ALONE, FREE, ThreadWaiter, Waiter


class Phase(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"  # draining: in-flight and queued calls still run
    STOPPING = "stopping"  # workers being stopped: no more replacements, even for waiters
    CLOSED = "closed"
    BROKEN = "broken"  # start failures in a row: every call is refused with PoolBroken


_RUNNING: Final = Phase.RUNNING  # per-call paths: see _handle.BUSY
_CLOSING: Final = Phase.CLOSING


@dataclass(slots=True)
class Actions:
    """What the supervisor must do after a step. Empty fields: nothing to do."""

    wake: Waiter | None = None  # a worker was assigned to this waiter: wake it
    retire: WorkerHandle | None = None  # out of service (recycled): stop it gracefully
    close_fds: WorkerHandle | None = None  # dead and no longer leased: close its fds
    check_memory: WorkerHandle | None = None  # due for a max_memory check
    flush: WorkerHandle | None = None  # leased to the supervisor: write its outbox, release it
    # A worker came free with nobody queued while calls wait behind this one's running call:
    # take one back (pipelining, ``Channel.take_back``), to run on the free worker.
    take_back: WorkerHandle | None = None
    ensure_capacity: bool = False  # a replacement may be due
    drained: bool = False  # closing, and nothing is leased or queued any more


class Checkout(SessionCheckout[Waiter], PipelineCheckout):
    """The pool's state: workers, the idle set, waiters, leases, counters, phase; sessions
    (:class:`~snakeden._sessions.SessionCheckout`) and pipelining (``_pipeline``)."""

    def __init__(self, config: PoolConfig, *, depth: int = 1) -> None:
        self.config = config
        self.clock: Callable[[], float] = config.clock
        self.size = config.min_size
        self.upper = config.upper_size
        self.depth = depth  # calls in flight per worker, for the pool (pipelining)
        self.shared = depth > 1  # some worker takes more than one call at once (see ready())
        self.memory_limited = config.max_memory is not None
        self.lock = threading.Lock()
        self.phase = Phase.NEW
        self.workers: dict[str, WorkerHandle] = {}
        self.idle: deque[WorkerHandle] = deque()
        self.waiters: deque[Waiter] = deque()
        self.leased = 0
        self.scheduled = 0  # starts promised whose worker is not registered yet
        self.failures_in_a_row = 0
        self.counters = Counters()
        self.reject: BaseException | None = None  # why calls are refused (closed, broken)
        self.resending = False  # closing, and a pipelined worker died: its calls come back
        self.returning = 0  # calls given back to be sent again, not yet queued or leased again
        self.behind = 0  # leases waiting behind another on pipelined workers (_pipeline)
        self._init_sessions()

    def __repr__(self) -> str:
        return (
            f"<Checkout {self.phase.value} workers={len(self.workers)} idle={len(self.idle)} "
            f"leased={self.leased} waiters={len(self.waiters)} scheduled={self.scheduled}>"
        )

    # --- callers -------------------------------------------------------------------------------

    def acquire(
        self,
        make_waiter: Callable[..., Waiter],
        mode: int = FREE,
        *,
        again: bool = False,
        args: tuple[Any, ...] = (),
    ) -> tuple[WorkerHandle | Waiter, bool]:
        """A leased worker now, or a queued waiter (FIFO) that will be assigned one.

        ``mode`` (``_waiters``): whether the call may queue behind another on a pipelined
        worker (JOIN), and whether others may queue behind it (not ALONE). A call joins a busy
        worker only when no worker is free and no caller waits. ``again``: a call accepted
        before, sent again (its worker died before it began), is served while the pool drains.
        The flag says whether the pool should grow (``max_size``)."""
        with self.lock:
            if self.reject is not None and not (again and self.phase is _CLOSING):
                self.counters.calls_rejected += 1
                raise self.reject
            if not self.waiters:
                if self.idle:
                    w = self.idle.pop()  # most recently used: warm caches, and lets others idle
                    w.move(BUSY)
                    w.inflight = 1
                    w.solo = mode == ALONE
                    w.leased_at = self.clock()  # for the live view: busy for how long
                    self.leased += 1
                    return w, False
                if self.shared and not self._below_max():  # else grow: a new worker is fairer
                    shared = self._least_loaded(mode)
                    if shared is not None:
                        self.behind += shared.pipelined
                        shared.inflight += 1
                        self.leased += 1
                        return shared, False
            if len(self.waiters) >= self.config.max_queue:
                self.counters.calls_rejected += 1
                raise PoolSaturated(
                    f"{len(self.waiters)} callers are already waiting (max_queue="
                    f"{self.config.max_queue}); slow down, add workers or raise max_queue"
                )
            waiter = make_waiter(*args)  # args: no closure per call for the collector to track
            waiter.mode = mode
            if again:  # accepted before: ahead of the calls that came since
                waiter.again = True
                i = 0
                while i < len(self.waiters) and self.waiters[i].again:
                    i += 1
                self.waiters.insert(i, waiter)
            else:
                self.waiters.append(waiter)
            return waiter, self._should_grow()

    def give_up(
        self, waiter: Waiter, *, cancelled: bool = False
    ) -> tuple[WorkerHandle | None, bool]:
        """The waiter's caller stopped waiting. Returns a worker it was assigned meanwhile (the
        caller must release it) and whether the pool is now drained."""
        with self.lock:
            got = waiter.worker
            if isinstance(waiter, ThreadWaiter):
                waiter.gave_up = True
            elif not waiter.fut.done():
                waiter.fut.cancel()
            if got is None:
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    if self.pinned:
                        self._drop_pinned(waiter)
                if cancelled:
                    self.counters.calls_cancelled += 1
                else:
                    self.counters.calls_rejected += 1
            return got, self._drained()

    def release(
        self, w: WorkerHandle, outcome: Outcome | None, wait: float = 0.0, latency: float = 0.0
    ) -> Actions | None:
        """Give back a lease. ``outcome`` (None: not a call, or a call that never ran) feeds the
        counters. Returns what to do next, or None when nothing is."""
        with self.lock:
            if outcome is not None:
                self.counters.count_call(outcome, wait, latency)
                w.busy_time += latency  # utilisation = busy time over wall time (metrics)
                w.calls += 1
                w.last_used = self.clock()
            if (
                w.inflight == 1
                and w.state is BUSY
                and not self.waiters
                and not self.pinned
                and not w.outbox
                and w.max_calls is None
                and not w.retiring
                and not self.memory_limited
                and self.phase is _RUNNING
                and not self.behind
            ):
                # The common case, decided without _settle's call (a function call is a
                # noticeable part of the host's cost of a call): nothing to do but idle it.
                self.leased -= 1
                w.inflight = 0
                w.move(IDLE)
                self.idle.append(w)
                return None
            return self._settle(w)

    def count(self, w: WorkerHandle, outcome: Outcome, wait: float, latency: float) -> None:
        """Count a call that ran on a lease which goes on (a ``map`` sends several)."""
        with self.lock:
            self._count(w, outcome, wait, latency)

    def _count(self, w: WorkerHandle, outcome: Outcome, wait: float, latency: float) -> None:
        self.counters.count_call(outcome, wait, latency)
        w.busy_time += latency  # utilisation = busy time over wall time (metrics)
        w.calls += 1
        w.last_used = self.clock()

    def _settle(self, w: WorkerHandle, *, in_order: bool = True) -> Actions | None:
        """One lease of ``w`` ends: decide where the worker goes. Under the lock.
        ``in_order`` False: a call taken back from behind the one ``w`` runs, which goes on."""
        self.leased -= 1
        if w.pipelined and w.inflight > 1:
            self.behind -= 1
        w.inflight -= 1
        act: Actions | None = None
        was_retiring = w.retiring
        if w.state is not BUSY:  # out of service: failed, retiring, or dead
            if w.inflight == 0 and w.state is DEAD:
                self.workers.pop(w.id, None)
                if w.close_on_release:
                    w.close_on_release = False
                    act = Actions(close_fds=w)
        elif (
            (w.max_calls is not None or w.retiring)
            and self._wants_retirement(w)
            and not (w.sessions and self._held(w))
        ):
            if w.inflight == 0:
                w.move(STOPPING, Cause.RETIRED)
                self.counters.recycled += 1
                self._orphan_pinned(w)
                act = Actions(retire=w, ensure_capacity=True)
        elif w.outbox:
            self.behind += w.pipelined and w.inflight > 0
            w.inflight += 1  # leased on to the supervisor, to send what waits for this worker
            self.leased += 1
            act = Actions(flush=w)
        else:
            # Pipelined with calls still in its pipe: the next of them begins now (unless the
            # lease that ended was one taken back). A waiter may take its place behind them
            # only if it may queue (and a session's may not).
            behind = w.pipelined and w.inflight > 0
            if behind and in_order:
                w.leased_at = self.clock()
            # Callers of a session pinned to this worker first: they can go nowhere else.
            waiter = self._next_pinned(w) if self.pinned and not behind else None
            while waiter is None and self.waiters:
                if behind and not self._may_queue(w, self.waiters[0].mode):
                    break  # it waits for a free worker: this one, once its pipe is empty
                waiter = self.waiters.popleft()
                if not waiter.alive():
                    waiter = None
            if waiter is not None:
                waiter.worker = w
                if w.inflight == 0:
                    w.solo = waiter.mode == ALONE
                self.behind += w.pipelined and w.inflight > 0
                w.inflight += 1  # the lease passes straight to the waiter
                w.leased_at = self.clock()
                self.leased += 1
                act = Actions(wake=waiter)
            if act is None and w.inflight == 0:
                w.move(IDLE)
                self.idle.append(w)
                if self.behind:
                    victim = self._stuck()
                    if victim is not None:
                        act = Actions(take_back=victim)
            if w.retiring and not was_retiring:
                act = act or Actions()
                act.ensure_capacity = True  # start the replacement now, so it is warm in time
            if self.memory_limited and w.last_used >= w.next_memory_check:
                # Whatever the queue: a busy pool must not outgrow its limit (checked off the
                # hot path, by the supervisor).
                w.next_memory_check = w.last_used + self.config.memory_check_interval
                act = act or Actions()
                act.check_memory = w
        if self.phase is _CLOSING and self._drained():
            act = act or Actions()
            act.drained = True
        return act

    def _wants_retirement(self, w: WorkerHandle) -> bool:
        if w.max_calls is not None:
            replacement_ready = w.replacing is not None and w.replacing.state is not STARTING
            # Past the limit, keep serving until the replacement is warm (capacity never dips),
            # but never past twice the limit.
            if w.calls >= w.max_calls and (replacement_ready or w.calls >= 2 * w.max_calls):
                w.must_retire = True
            elif w.calls >= w.max_calls - 1 and not w.retiring:
                # Start the replacement now, so it is warm when this worker's last call ends.
                w.retiring = True
        if w.must_retire:
            return True
        if w.retiring:
            return w.replacing is not None and w.replacing.state is not STARTING
        return False

    def _drained(self) -> bool:
        return (
            self.phase is Phase.CLOSING
            and self.leased == 0
            and not self.waiters
            and not self.pinned
            and not self.returning
        )

    def fail(self, w: WorkerHandle, cause: Cause) -> bool:
        """Take ``w`` out of service for ``cause`` (the caller then kills it). An idle worker
        leaves the idle set at once, so it is never handed out. False if it was already out."""
        with self.lock:
            if w.state in (STOPPING, DEAD):
                return False
            if w.state is IDLE:
                self.idle.remove(w)
            w.move(STOPPING, cause)
            self._orphan_pinned(w)
            return True

    # --- supervisor ------------------------------------------------------------------------------

    def add(self, w: WorkerHandle, *, scheduled: bool) -> None:
        """Register a worker about to be launched; it takes the place of a scheduled start in the
        same step, so the pool never counts neither."""
        with self.lock:
            self.workers[w.id] = w
            if scheduled:
                self.scheduled -= 1

    def unschedule(self) -> None:
        with self.lock:
            self.scheduled -= 1

    def ready(self, w: WorkerHandle) -> tuple[bool, Actions | None]:
        """The worker said HELLO: put it in service (assigned to a waiter, or idle). Returns
        whether it is in service, and what to do next. A worker whose exit was seen before its
        HELLO was handled died right after start-up: it is replaced like any crashed worker."""
        with self.lock:
            self.failures_in_a_row = 0
            if w.state is DEAD:
                self.workers.pop(w.id, None)
                if self.may_start():
                    self.counters.restarts += 1
                    return False, Actions(ensure_capacity=True)
                return False, None
            if w.state is not STARTING:
                return False, None  # stopped by close() meanwhile; its exit finishes it
            w.ready_at = w.last_used = self.clock()
            self._pipeline(w)
            w.move(BUSY)
            w.inflight = 1
            self.leased += 1
            return True, self._settle(w)

    def start_failed(self, w: WorkerHandle, *, in_a_row: bool = True) -> bool:
        """A launch or handshake failed. True when the pool should now be declared broken
        (``in_a_row``: count it towards that; the initial start reports its failures itself)."""
        with self.lock:
            if w.state is not DEAD:
                w.move(DEAD, Cause.EXITED)
            self.workers.pop(w.id, None)
            self.counters.start_failures += 1
            self.failures_in_a_row += in_a_row
            return self.failures_in_a_row >= self.config.max_start_failures

    def exited(self, w: WorkerHandle) -> tuple[bool, bool]:
        """The worker's process is gone. Returns ``(close_fds_now, unplanned)``: whether nobody
        holds a lease (so its fds can be closed now), and whether this is a death to report and
        replace (not a retirement, a shutdown, or a start the start path reports)."""
        with self.lock:
            prior = w.state
            if prior is IDLE:
                self.idle.remove(w)
            if prior is not DEAD:
                w.move(DEAD, Cause.EXITED)
            self._orphan_pinned(w)
            close_now = w.inflight == 0
            # A caller holding the lease may be blocked in read() on the channel: closing the fd
            # under it would let the number be reused by the next worker's pipe.
            w.close_on_release = not close_now
            if w.ready_at is None:
                return close_now, False  # never in service: the start path reports it
            if close_now:
                self.workers.pop(w.id, None)
            assert w.cause is not None
            if w.cause.planned:
                return close_now, False
            if self.phase in (Phase.STOPPING, Phase.CLOSED):
                return close_now, False
            if self.phase is Phase.CLOSING and not self.waiters:
                if w.inflight <= 1 and not self.returning:
                    return close_now, False
                self.resending = True  # calls that waited in its pipe come back to be served
            self.counters.restarts += 1
            by_cause = self.counters.restarts_by_cause
            by_cause[w.cause.name.lower()] = by_cause.get(w.cause.name.lower(), 0) + 1
            return close_now, True

    def take_idle(self, w: WorkerHandle, *, stop: Cause | None = None) -> bool:
        """Take ``w`` out of the idle set: leased to the supervisor (a ping), or, with ``stop``,
        out of service for that cause. False if it is not idle any more."""
        with self.lock:
            if w.state is not IDLE:
                return False
            if w.sessions and (stop is Cause.SHRUNK or (stop is Cause.RETIRED and self._held(w))):
                return False  # holds open sessions: not shrunk; recycled once they close
            self.idle.remove(w)
            if stop is None:
                w.move(BUSY)
                w.inflight = 1
                w.solo = False
                w.leased_at, w.current_command = self.clock(), "(health check)"
                self.leased += 1
            else:
                w.move(STOPPING, stop)
                if stop is Cause.RETIRED:
                    self.counters.recycled += 1
            return True

    def mark_retiring(self, w: WorkerHandle, *, now: bool = False) -> Actions:
        """Recycle ``w``: serve on until its replacement is warm, or (``now``) leave service at
        once if idle, else at its next release."""
        with self.lock:
            w.retiring = True
            act = Actions(ensure_capacity=True)
            if now:
                w.must_retire = True
                if w.state is IDLE and not (w.sessions and self._held(w)):
                    self.idle.remove(w)
                    w.move(STOPPING, Cause.RETIRED)
                    self.counters.recycled += 1
                    act.retire = w
            return act

    def may_start(self) -> bool:
        """Start workers while running, and while closing if callers still wait to be served."""
        if self.phase in (Phase.RUNNING, Phase.STARTING):
            return self.reject is None
        return self.phase is Phase.CLOSING and (
            bool(self.waiters) or self.resending or self.returning > 0
        )

    def plan_capacity(self) -> list[WorkerHandle | None]:
        """Schedule the starts that bring the pool back to ``size`` workers that are not on
        their way out. Each entry is a start: the worker it replaces (recycling), or None."""
        with self.lock:
            if not self.may_start():
                return []
            active = sum(1 for w in self.workers.values() if w.active)
            # Starts scheduled but still backing off count too, or every call here during a
            # back-off would schedule another one.
            missing = max(0, self.size - active - self.scheduled)
            retiring = [
                w
                for w in self.workers.values()
                if (w.retiring or w.must_retire)
                and not w.replacement_scheduled
                and w.state is not DEAD
            ]
            self.scheduled += missing
            plan: list[WorkerHandle | None] = []
            for i in range(missing):
                old = retiring[i] if i < len(retiring) else None
                if old is not None:
                    old.replacement_scheduled = True  # one replacement per retiring worker
                plan.append(old)
            return plan

    def plan_growth(self) -> bool:
        """One more worker, because callers queue and ``max_size`` allows it."""
        with self.lock:
            grow = self.phase is Phase.RUNNING and self._should_grow()
            if grow:
                self.scheduled += 1
            return grow

    def _should_grow(self) -> bool:
        if not self._below_max():
            return False
        starting = self.scheduled + sum(1 for w in self.workers.values() if w.state is STARTING)
        return len(self.waiters) > starting

    def _below_max(self) -> bool:
        if self.upper == self.size:
            return False  # no max_size: nothing to decide, and this runs for every queued call
        live = self.scheduled + sum(
            1 for w in self.workers.values() if w.state not in (DEAD, STOPPING)
        )
        return live < self.upper

    def backoff(self) -> float:
        """Seconds to wait before the next start, growing with failures in a row."""
        n = self.failures_in_a_row
        if not n:
            return 0.0
        return float(
            min(self.config.restart_backoff_max, self.config.restart_backoff * 2 ** (n - 1))
        )

    def due(self, now: float) -> list[tuple[WorkerHandle, str]]:
        """Maintenance due at ``now``: ``age`` (recycle), ``shrink``, ``ping``, ``memory``."""
        cfg = self.config
        out: list[tuple[WorkerHandle, str]] = []
        with self.lock:
            live = sum(1 for w in self.workers.values() if w.state is not DEAD)
            for w in list(self.idle):
                if cfg.max_age is not None and now - w.born > cfg.max_age and not w.retiring:
                    out.append((w, "age"))
                elif (
                    w.held_since is not None
                    and (w.retiring or w.must_retire)
                    and self._wants_retirement(w)
                    and not self._held(w)
                ):
                    out.append((w, "retire"))  # held for its sessions, and no longer
                elif (
                    cfg.idle_timeout is not None
                    and not w.sessions
                    and live > self.size
                    and now - w.last_used > cfg.idle_timeout
                ):
                    out.append((w, "shrink"))
                    live -= 1
                elif cfg.health_interval is not None and now - w.last_used > cfg.health_interval:
                    out.append((w, "ping"))
            if cfg.max_memory is not None:
                for w in self.workers.values():
                    if w.in_service and now >= w.next_memory_check:
                        w.next_memory_check = now + cfg.memory_check_interval
                        out.append((w, "memory"))
            return out

    # --- the pool as a whole -------------------------------------------------------------------

    def begin_close(self, *, cancel_pending: bool) -> tuple[list[Waiter], bool]:
        """Refuse new calls. Returns the waiters to fail (when ``cancel_pending``) and whether
        there is anything to drain."""
        with self.lock:
            broken = self.phase is Phase.BROKEN
            self.phase = Phase.CLOSING
            if not broken:
                self.reject = PoolClosed("the pool is closed")
            failed = [*self.waiters, *self._take_all_pinned()] if cancel_pending else []
            if cancel_pending:
                self.waiters.clear()
            return failed, self.leased > 0 or bool(self.waiters) or bool(self.pinned)

    def stop(self) -> list[Waiter]:
        """No more replacements, even for waiters; returns the waiters left to fail."""
        with self.lock:
            self.phase = Phase.STOPPING
            left, self.waiters = [*self.waiters, *self._take_all_pinned()], deque()
            return left

    def break_(self, err: BaseException) -> list[Waiter]:
        """Start failures in a row: refuse every call with ``err``; returns the waiters."""
        with self.lock:
            if self.phase is not Phase.CLOSING or self.reject is None:
                self.reject = err
            if self.phase is not Phase.CLOSING:
                self.phase = Phase.BROKEN
            waiters, self.waiters = [*self.waiters, *self._take_all_pinned()], deque()
            return waiters

    def ready_count(self) -> int:
        with self.lock:
            return sum(1 for w in self.workers.values() if w.in_service)

    def snapshot(self) -> PoolStats:
        """The pool's numbers now (``Pool.stats()``)."""
        return snapshot(self)

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping disagrees with itself (tests call this)."""
        check_invariants(self)
