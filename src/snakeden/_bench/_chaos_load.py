"""The load a chaos storm drives and how it is judged: call specs, outcomes, the two fronts,
the pool's own invariants, the report, the killer and the settling waits.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import random
import select
import signal
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import snakeden

from ._chaos_procs import CLOSE_BOUND, WORKER, EventLog, Front, alive, leftovers, pace, worker_state


@dataclass(frozen=True)
class CallSpec:
    index: int
    kind: str  # what the storm expects of it: "normal", "hang", "garbage", "os_exit", ...
    cmd: str
    args: tuple[Any, ...]
    timeout: float | None = None


@dataclass
class Outcome:
    spec: CallSpec
    value: Any
    error: BaseException | None
    t0: float
    t1: float


class _Load:
    """Hands out call specs to the lanes until ``more()`` says stop; counts what is in flight."""

    def __init__(self, make: Callable[[int], CallSpec], more: Callable[[int], bool]) -> None:
        self._make = make
        self._more = more
        self._next = 0
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.running = 0

    def take(self) -> CallSpec | None:
        with self._lock:
            if not self._more(self._next):
                return None
            spec = self._make(self._next)
            self._next += 1
            self.running += 1
            return spec

    def done(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)
            self.running -= 1


class _Front:
    """What the storms read of either front's pool."""

    @property
    def p(self) -> snakeden.Pool | snakeden.SyncPool:
        raise NotImplementedError

    def stats(self) -> snakeden.PoolStats:
        return self.p.stats()

    def pids(self) -> list[int]:
        return self.p.worker_pids()

    @property
    def run_tag(self) -> str:
        return self.p.run_tag


class AsyncFront(_Front):
    """A ``snakeden.Pool`` on the storm's own event loop."""

    name: Front = "async"
    freezes_host = True  # a storm task that blocks its loop blocks the pool too

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.pool: snakeden.Pool | None = None

    @property
    def p(self) -> snakeden.Pool:
        assert self.pool is not None
        return self.pool

    async def start(self, target: str = WORKER) -> None:
        self.pool = await snakeden.Pool(target, **self.options).start()

    async def run(self, load: _Load, lanes: int, bound: float) -> bool:
        """Drive ``load`` with ``lanes`` concurrent callers; False if it outlived ``bound``."""
        pool = self.p

        async def lane() -> None:
            while (spec := load.take()) is not None:
                t0 = time.monotonic()
                try:
                    value = await pool.call_with(spec.cmd, spec.args, timeout=spec.timeout)
                except Exception as exc:
                    load.done(Outcome(spec, None, exc, t0, time.monotonic()))
                else:
                    load.done(Outcome(spec, value, None, t0, time.monotonic()))

        tasks = [asyncio.ensure_future(lane()) for _ in range(lanes)]
        _, pending = await asyncio.wait(tasks, timeout=bound)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return not pending

    async def call(self, cmd: str, *args: Any, timeout: float | None = None) -> Any:
        return await self.p.call_with(cmd, args, timeout=timeout)

    async def wait_ready(self, timeout: float) -> None:
        await self.p.wait_ready(timeout=timeout)

    async def close(self, within: float, **kwargs: Any) -> str | None:
        closing = asyncio.ensure_future(self.p.close(**kwargs))
        done, _ = await asyncio.wait({closing}, timeout=within)
        if done:
            closing.result()
            return None
        _force_kill(self.p)
        return f"close() did not return within {within}s: {self.p!r}"


class SyncFront(_Front):
    """A ``snakeden.SyncPool``; its callers are threads, the storm's loop only orchestrates."""

    name: Front = "sync"
    freezes_host = False

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.pool: snakeden.SyncPool | None = None

    @property
    def p(self) -> snakeden.SyncPool:
        assert self.pool is not None
        return self.pool

    async def start(self, target: str = WORKER) -> None:
        self.pool = await asyncio.to_thread(snakeden.SyncPool, target, **self.options)

    async def run(self, load: _Load, lanes: int, bound: float) -> bool:
        pool = self.p
        return await self._run_lanes(
            load,
            lanes,
            bound,
            lambda spec: pool.call_with(spec.cmd, spec.args, timeout=spec.timeout),
        )

    async def _run_lanes(
        self, load: _Load, lanes: int, bound: float, call: Callable[[CallSpec], Any]
    ) -> bool:
        def lane() -> None:
            while (spec := load.take()) is not None:
                t0 = time.monotonic()
                try:
                    value = call(spec)
                except Exception as exc:
                    load.done(Outcome(spec, None, exc, t0, time.monotonic()))
                else:
                    load.done(Outcome(spec, value, None, t0, time.monotonic()))

        threads = [
            threading.Thread(target=lane, daemon=True, name=f"chaos-lane-{i}") for i in range(lanes)
        ]
        for t in threads:
            t.start()

        def join() -> bool:
            deadline = time.monotonic() + bound
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            return not any(t.is_alive() for t in threads)

        return await asyncio.to_thread(join)

    async def call(self, cmd: str, *args: Any, timeout: float | None = None) -> Any:
        return await asyncio.to_thread(self.p.call_with, cmd, args, timeout=timeout)

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.to_thread(self.p.wait_ready, None, timeout)

    async def close(self, within: float, **kwargs: Any) -> str | None:
        pool = self.p
        thread = threading.Thread(target=lambda: pool.close(**kwargs), daemon=True)
        thread.start()
        await asyncio.to_thread(thread.join, within)
        if not thread.is_alive():
            return None
        _force_kill(pool)
        return f"close() did not return within {within}s: {pool!r}"


class SubmitFront(SyncFront):
    """A ``snakeden.SyncPool`` driven through ``submit()`` (its pipelining lanes): each caller
    thread submits a call and waits for its future; a call with a timeout goes by ``call()``."""

    name: Front = "submit"

    async def run(self, load: _Load, lanes: int, bound: float) -> bool:
        pool = self.p

        def call(spec: CallSpec) -> Any:
            if spec.timeout is not None:
                return pool.call_with(spec.cmd, spec.args, timeout=spec.timeout)
            return pool.submit(spec.cmd, *spec.args).result()

        return await self._run_lanes(load, lanes, bound, call)


AnyFront = AsyncFront | SyncFront


def make_front(front: Front, **options: Any) -> AnyFront:
    if front == "async":
        return AsyncFront(**options)
    return SubmitFront(**options) if front == "submit" else SyncFront(**options)


def _force_kill(pool: snakeden.Pool | snakeden.SyncPool) -> None:
    """After a failed close: kill what the pool started, so one broken storm does not leave
    processes behind for the next."""
    core = getattr(pool, "_core", None)
    helpers = list(getattr(getattr(core, "launcher", None), "pids", list)())
    for pid in [*pool.worker_pids(), *helpers]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- invariants ---------------------------------------------------------------------------------


def pool_violations(
    pool: snakeden.Pool | snakeden.SyncPool,
    *,
    quiescent: bool = False,
    size: int | None = None,
    during: bool = False,
) -> list[str]:
    """What is wrong with the pool's state, from its public API (and the core's own
    ``check_invariants()`` where it has one). ``quiescent``: no call is running or queued now;
    ``size``: the pool should be at full strength; ``during``: a storm is raging (a worker
    killed a moment ago may still be listed)."""
    v: list[str] = []
    s = pool.stats()
    for name in ("workers", "stopping", "starting", "ready", "busy", "in_flight", "queued"):
        if getattr(s, name) < 0:
            v.append(f"stats().{name} is negative: {s}")
    if s.busy > s.in_flight:
        v.append(f"{s.busy} busy workers but only {s.in_flight} calls in flight")
    if s.ready > s.workers and not during:  # mid-storm, a killed idle worker may still count
        v.append(f"{s.ready} ready workers out of {s.workers}")
    if quiescent:
        if s.in_flight or s.queued or s.busy:
            v.append(
                f"nothing runs, yet in_flight={s.in_flight} queued={s.queued} busy={s.busy}: "
                f"a leaked lease or a lost waiter"
            )
        if size is not None and s.ready != size:
            v.append(f"nothing runs, yet {s.ready} of {size} workers are ready")
    if size is not None and s.workers != size:
        v.append(f"{s.workers} workers in service, not {size}")
    pids = pool.worker_pids()
    if len(set(pids)) != len(pids):
        v.append(f"a pid listed twice: {pids}")
    dead = [] if during else [pid for pid in pids if not alive(pid)]
    if dead:
        v.append(f"worker_pids() lists dead processes {dead}: the pool lost track of an exit")
    check = getattr(getattr(pool, "_core", None), "check_invariants", None)
    if callable(check):
        try:
            check()
        except AssertionError as exc:
            v.append(f"check_invariants(): {exc}")
    return v


# --- reports ------------------------------------------------------------------------------------


@dataclass
class StormReport:
    storm: str
    front: str
    seed: int
    calls: int = 0
    ok: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    kills: int = 0
    redispatched: int | None = None
    taken_back: int | None = None  # calls taken back from behind a long one (pipelining)
    recovery: list[float] = field(default_factory=list)  # s, a kill to a replacement ready
    lateness: list[float] = field(default_factory=list)  # s, past a call's timeout
    figures: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0
    violations: list[str] = field(default_factory=list)

    def violate(self, text: str) -> None:
        self.violations.append(text)

    def summary(self) -> str:
        head = (
            f"{self.storm}[{self.front}] seed={self.seed} calls={self.calls} ok={self.ok} "
            f"errors={dict(self.errors)} kills={self.kills} redispatched={self.redispatched} "
            f"taken_back={self.taken_back} "
            f"recovery={_spread(self.recovery)} lateness={_spread(self.lateness)} "
            f"{' '.join(f'{k}={v:g}' for k, v in self.figures.items())} "
            f"elapsed={self.elapsed:.2f}s"
        )
        if not self.violations:
            return head
        shown = self.violations[:20]
        more = len(self.violations) - len(shown)
        tail = [f"... {more} more"] if more else []
        return "\n  ".join([head, f"{len(self.violations)} violations:", *shown, *tail])


def _spread(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    return f"p50={statistics.median(xs) * 1e3:.0f}ms/max={max(xs) * 1e3:.0f}ms(n={len(xs)})"


def _seeded(seed: int | None) -> tuple[int, random.Random]:
    seed = random.randrange(1 << 30) if seed is None else seed
    return seed, random.Random(seed)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if not text and exc.__traceback__ is not None:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"at {Path(where.filename).name}:{where.lineno} in {where.name}"
    return f"{type(exc).__name__}: {text}"


def _expect_ok(report: StormReport, o: Outcome) -> bool:
    """A call that must succeed: did it return its own result?"""
    spec = o.spec
    if o.error is not None:
        report.violate(f"call {spec.index} ({spec.kind}) failed: {_describe(o.error)}")
        return False
    if spec.cmd in ("work", "work_then_die"):
        ok = isinstance(o.value, list) and len(o.value) == 2 and o.value[1] == spec.args[0]
    elif spec.cmd == "echo":
        ok = o.value == spec.args[0]
    else:
        ok = True
    if not ok:
        report.violate(f"call {spec.index} returned {o.value!r}, not its own result")
    return ok


def _got(o: Outcome) -> str:
    return _describe(o.error) if o.error is not None else repr(o.value)


def _tally(report: StormReport, outcomes: Sequence[Outcome]) -> None:
    report.calls += len(outcomes)
    for o in outcomes:
        if o.error is None:
            report.ok += 1
        else:
            report.errors[type(o.error).__name__] += 1


def _hang_lateness(log: Path, outcomes: Sequence[Outcome]) -> list[float]:
    """Seconds each timed-out call's error came after its start (noted by the worker) plus its
    timeout."""
    started: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in log.read_text().splitlines():
            token, _pid, at = line.split()
            started[token] = float(at)
    late = []
    for o in outcomes:
        token = str(o.spec.index)
        if o.spec.kind == "hang" and token in started and o.spec.timeout is not None:
            late.append(o.t1 - started[token] - o.spec.timeout)
    return late


async def _settle(
    report: StormReport,
    front: AnyFront,
    log: EventLog,
    size: int,
    *,
    events: dict[str, int] | None = None,
    crashed: set[int] | None = None,
    counters: dict[str, int] | None = None,
    bound: float,
) -> None:
    """After a storm's load: nothing leaked, every harm noticed, full strength, counters right,
    and ``close()`` returns."""
    s = front.stats()
    if s.in_flight or s.queued:
        report.violate(
            f"every caller has returned, yet in_flight={s.in_flight} queued={s.queued}: "
            f"a leaked lease or a lost waiter"
        )
    for kind, n in (events or {}).items():
        if not await log.wait_count(kind, n, bound):
            report.violate(f"{log.count(kind)} {kind!r} events within {bound}s, expected {n}")
    if crashed:

        def all_noticed(evs: list[snakeden.WorkerEvent]) -> bool:
            return crashed <= {e.pid for e in evs if e.kind in ("crashed", "timed_out")}

        if not await log.wait_for_async(all_noticed, bound):
            missing = crashed - log.pids("crashed", "timed_out")
            report.violate(f"killed workers never reported as crashed: {sorted(missing)}")
    t0 = time.monotonic()
    try:
        await front.wait_ready(bound)
    except Exception as exc:
        report.violate(f"not back to full strength within {bound}s: {_describe(exc)}")
    else:
        report.figures["final_recovery_ms"] = round((time.monotonic() - t0) * 1e3, 1)
        # The pool serves again, on every worker.
        try:
            got = await asyncio.wait_for(
                asyncio.gather(*(front.call("echo", i) for i in range(4 * size))), bound
            )
            if got != list(range(4 * size)):
                report.violate(f"after the storm, echo returned {got}")
        except Exception as exc:
            report.violate(f"after the storm, a plain call failed: {_describe(exc)}")
        # Recycling may still be under way (a worker found over max_memory by those calls is
        # replaced now): judge the pool once it has settled, or as it is after the bound.
        await _settled(front, size, bound)
        report.violations.extend(pool_violations(front.p, quiescent=True, size=size))
    s = front.stats()
    report.redispatched = getattr(s, "calls_redispatched", None)
    report.taken_back = getattr(s, "calls_taken_back", None)
    for name, n in (counters or {}).items():
        if getattr(s, name) != n:
            report.violate(f"stats().{name} == {getattr(s, name)}, expected {n}")
    tag = front.run_tag
    problem = await front.close(min(bound, CLOSE_BOUND))
    if problem:
        report.violate(problem)
    left = await asyncio.to_thread(leftovers, tag)
    if left:
        report.violate(f"processes left behind after close(): {left}")


def _recovery(kill_times: Sequence[float], log: EventLog, size: int) -> list[float]:
    """For each kill (or other loss of a worker), the seconds until the pool was at full
    strength again: the strength drops at each loss and rises at each ``ready`` event after."""
    if not kill_times:
        return []
    first = min(kill_times)
    changes = sorted(
        [(t, -1) for t in kill_times]
        + [(e.at, +1) for e in log.snapshot() if e.kind == "ready" and e.at >= first]
    )
    strength = size
    waiting: list[float] = []
    out: list[float] = []
    for t, delta in changes:
        strength += delta
        if delta < 0:
            waiting.append(t)
        elif strength >= size:
            out.extend(t - k for k in waiting)
            waiting.clear()
    return out


# --- 1. kill storm ------------------------------------------------------------------------------


class Killer:
    """Every ``every`` seconds, SIGKILL ``per_round`` random ready workers, ``rounds`` times.

    On the asyncio front the killer runs on the pool's own loop and blocks it while it looks at
    a victim and kills it, until the victim is dead: nothing can be sent to the victim meanwhile,
    so whether it was idle (blocked reading an empty channel) is known exactly. A call that then
    fails on an idle victim never ran: it must have been re-dispatched instead."""

    def __init__(
        self, front: AnyFront, log: EventLog, rounds: int, every: float, per_round: int
    ) -> None:
        self.front = front
        self.log = log
        self.rounds = rounds
        self.every = every
        self.per_round = per_round
        self.rng = random.Random()
        self.killed: dict[int, str] = {}  # pid -> "idle", "busy" or "?" when killed
        self.kill_times: list[float] = []
        self.finished = False
        self.violations: list[str] = []  # seen in the pool's state mid-storm, each once

    async def run(self) -> None:
        try:
            for _ in range(self.rounds):
                await pace(self.every)
                for v in pool_violations(self.front.p, during=True):
                    if v not in self.violations:
                        self.violations.append(v)
                ready = self.log.pids("ready") & set(self.front.pids())
                candidates = sorted(ready - self.killed.keys())
                for pid in self.rng.sample(candidates, min(self.per_round, len(candidates))):
                    self.kill(pid)
        finally:
            self.finished = True

    def kill(self, pid: int) -> None:
        freeze = self.front.freezes_host
        state = worker_state(pid) if freeze else "?"
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            os.kill(pid, signal.SIGKILL)
            self.killed[pid] = state
            self.kill_times.append(time.monotonic())
            if freeze:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                poller.poll(10_000)  # dead: its end of every pipe is closed
        finally:
            os.close(pidfd)


async def _settled(front: Any, size: int, bound: float) -> None:
    """Until no worker is starting or stopping and ``size`` serve: a bounded look at the pool's
    own state, which has no event for "nothing more to do"."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        s = front.stats()
        if s.workers == size and not s.starting and not s.stopping and not s.in_flight:
            return
        await asyncio.sleep(0.01)  # the poll's period


def _future_outcome(
    f: concurrent.futures.Future[Any], timeout: float
) -> tuple[Any, BaseException | None]:
    try:
        return f.result(timeout), None
    except BaseException as exc:  # cancelled, timed out, or the call's own error
        return None, exc


# --- 5. start/close cycles ------------------------------------------------------------------------
