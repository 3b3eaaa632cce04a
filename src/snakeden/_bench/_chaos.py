"""Chaos storms: real processes, real signals, many calls at once, and exact expectations.

Each storm starts a pool of :mod:`snakeden._bench.chaos_worker`, drives a load through it while
doing harm (SIGKILLs, calls hung in C, cancellations, garbage on the reply channel, memory bombs,
start/close cycles), and returns a :class:`StormReport`: counts, figures (kills, failed calls,
calls re-dispatched, recovery times, timeout lateness) and ``violations``, the broken
expectations. ``tests/chaos`` runs the storms scaled down and asserts there are no violations;
``snakeden bench --soak`` runs them at full scale for minutes and prints the figures.

What every storm expects, to the letter:

* a call fails only if it was harmed itself: it ran on a worker that was killed (and at most one
  call per killed worker, none if that worker was idle when it died: a call that provably never
  ran is re-dispatched, never failed), it hung (``CallTimeout``), it wrote garbage
  (``ProtocolError``), it crashed its worker (``WorkerCrashed`` with that exit), or its caller was
  cancelled (its own ``CancelledError``); every other call returns its own correct result;
* no call hangs or is lost (every storm is bounded);
* afterwards nothing is leased or queued, every worker the pool lists is alive, the pool is back
  to full strength, its counters agree with what the callers saw, and ``close()`` returns.

Nothing here waits on a sleep for something to happen: waits are on lifecycle events, futures,
process exits and FIFOs, each with a generous bound. :func:`pace` only spaces out the load
generator's own actions (a kill every 25 ms, a cancellation after a random delay).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import os
import platform
import random
import resource
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

import snakeden

WORKER = "snakeden._bench.chaos_worker"
MIB = 1024 * 1024
#: close() takes a fraction of a second; past this it is taken to hang (a leaked lease).
CLOSE_BOUND = 10.0

Front = Literal["async", "sync"]


async def pace(seconds: float) -> None:
    """Space out the load generator's own actions. Never a way to wait for something."""
    await asyncio.sleep(seconds)


# --- lifecycle events ---------------------------------------------------------------------------


class EventLog:
    """Every lifecycle event of a pool (its ``on_event``), waitable from any thread."""

    def __init__(self) -> None:
        self.events: list[snakeden.WorkerEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: snakeden.WorkerEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def snapshot(self) -> list[snakeden.WorkerEvent]:
        with self._cond:
            return list(self.events)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.snapshot() if e.kind == kind)

    def pids(self, *kinds: str) -> set[int]:
        return {e.pid for e in self.snapshot() if e.kind in kinds and e.pid is not None}

    def wait_for(
        self, predicate: Callable[[list[snakeden.WorkerEvent]], bool], timeout: float
    ) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.events), timeout)

    async def wait_for_async(
        self, predicate: Callable[[list[snakeden.WorkerEvent]], bool], timeout: float
    ) -> bool:
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    def wait_count(self, kind: str, n: int, timeout: float) -> Awaitable[bool]:
        return self.wait_for_async(lambda evs: sum(e.kind == kind for e in evs) >= n, timeout)


# --- processes ----------------------------------------------------------------------------------

# read(2), readv(2), pread64(2), preadv(2): where a worker waiting for its next call sits.
_READ_SYSCALLS = {"x86_64": {0, 19, 17, 295}, "aarch64": {63, 65, 67, 69}}


def worker_state(pid: int) -> str:
    """``"idle"`` if the process is blocked reading a pipe that holds nothing (a worker waiting
    for a call nobody sent), ``"busy"`` if it is doing anything else, ``"?"`` if unknown.

    Only exact while nothing can write to that pipe meanwhile: the asyncio front's event loop is
    blocked by whoever asks (see :class:`Killer`)."""
    nrs = _READ_SYSCALLS.get(platform.machine())
    if nrs is None:
        return "?"
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return "?"
    if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) not in nrs:
        return "busy"  # running, or in another system call (sleeping in a command, say)
    try:
        fd = os.open(f"/proc/{pid}/fd/{int(fields[1], 16)}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return "?"
    try:
        pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return "?"
    finally:
        os.close(fd)
    return "idle" if pending == 0 else "busy"


def wait_exit(pid: int, timeout: float, *, reaped: bool = False) -> bool:
    """Block until process ``pid`` has exited (with ``reaped``: and its parent reaped it).
    True if it did within ``timeout``."""
    if reaped:
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            return False
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_processes(run_tag: str) -> list[psutil.Process]:
    """Live processes a pool with ``run_tag`` started, wherever they were reparented."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get("SNAKEDEN_RUN_TAG") == run_tag:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def leftovers(run_tag: str, timeout: float = 15.0) -> list[int]:
    """Processes of ``run_tag`` still alive after waiting up to ``timeout`` for their exits."""
    _, left = psutil.wait_procs(run_processes(run_tag), timeout=timeout)
    return [p.pid for p in left if alive(p.pid)]


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """``n`` processes spinning on a CPU each, for as long as the block runs."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


class Barrier:
    """Hold ``n`` workers at once with the ``hold`` command: each writes its pid to a FIFO (this
    reads them) and waits for a byte on another (``release`` writes them)."""

    def __init__(self, directory: str) -> None:
        self.announce = str(Path(directory, "announce"))
        self.gate = str(Path(directory, "gate"))
        os.mkfifo(self.announce)
        os.mkfifo(self.gate)
        self._read = os.open(self.announce, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO from reporting end-of-file between two announcements.
        self._keep = os.open(self.announce, os.O_WRONLY | os.O_NONBLOCK)
        self._gate = os.open(self.gate, os.O_RDWR)  # a reader and writer: opens never block
        self._buf = b""

    def wait(self, n: int, timeout: float) -> list[int]:
        """The pids of the first ``n`` holders; fewer if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        while self._buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                break
            with contextlib.suppress(BlockingIOError):
                self._buf += os.read(self._read, 4096)
        return [int(x) for x in self._buf.split()[:n]]

    def release(self, n: int) -> None:
        os.write(self._gate, b"x" * n)

    def close(self) -> None:
        for fd in (self._read, self._keep, self._gate):
            os.close(fd)


# --- the two fronts, driven alike ---------------------------------------------------------------


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


class AsyncFront:
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

    def stats(self) -> snakeden.PoolStats:
        return self.p.stats()

    def pids(self) -> list[int]:
        return self.p.worker_pids()

    @property
    def run_tag(self) -> str:
        return self.p.run_tag

    async def close(self, within: float, **kwargs: Any) -> str | None:
        closing = asyncio.ensure_future(self.p.close(**kwargs))
        done, _ = await asyncio.wait({closing}, timeout=within)
        if done:
            closing.result()
            return None
        _force_kill(self.p)
        return f"close() did not return within {within}s: {self.p!r}"


class SyncFront:
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

        def lane() -> None:
            while (spec := load.take()) is not None:
                t0 = time.monotonic()
                try:
                    value = pool.call_with(spec.cmd, spec.args, timeout=spec.timeout)
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

    def stats(self) -> snakeden.PoolStats:
        return self.p.stats()

    def pids(self) -> list[int]:
        return self.p.worker_pids()

    @property
    def run_tag(self) -> str:
        return self.p.run_tag

    async def close(self, within: float, **kwargs: Any) -> str | None:
        pool = self.p
        thread = threading.Thread(target=lambda: pool.close(**kwargs), daemon=True)
        thread.start()
        await asyncio.to_thread(thread.join, within)
        if not thread.is_alive():
            return None
        _force_kill(pool)
        return f"close() did not return within {within}s: {pool!r}"


AnyFront = AsyncFront | SyncFront


def make_front(front: Front, **options: Any) -> AnyFront:
    return AsyncFront(**options) if front == "async" else SyncFront(**options)


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


async def kill_storm(
    front: Front,
    *,
    size: int = 4,
    rounds: int = 12,
    every: float = 0.025,
    per_round: int = 2,
    min_calls: int = 300,
    lanes: int = 16,
    max_ms: float = 6.0,
    bound: float = 60.0,
    seed: int | None = None,
) -> StormReport:
    """SIGKILL ``per_round`` random workers every ``every`` s for ``rounds`` rounds while
    ``lanes`` callers keep calls flowing (at least ``min_calls``, and until the killing ends)."""
    seed, rng = _seeded(seed)
    report = StormReport("kill", front, seed)
    log = EventLog()
    fr = make_front(front, size=size, on_event=log)
    t0 = time.monotonic()
    await fr.start()
    killer = Killer(fr, log, rounds, every, per_round)
    killer.rng = random.Random(rng.random())
    load = _Load(
        lambda i: CallSpec(i, "normal", "work", (i, rng.uniform(0, max_ms))),
        lambda i: i < min_calls or not killer.finished,
    )
    killing = asyncio.ensure_future(killer.run())
    finished = await fr.run(load, lanes, bound)
    killing.cancel()
    await asyncio.gather(killing, return_exceptions=True)
    if not finished:
        report.violate(f"{load.running} calls still unanswered after {bound}s")
    _tally(report, load.outcomes)
    report.kills = len(killer.killed)
    report.violations.extend(f"mid-storm: {v}" for v in killer.violations)
    failures: collections.Counter[int] = collections.Counter()
    crashed = 0
    for o in load.outcomes:
        if o.error is None:
            _expect_ok(report, o)
        elif type(o.error) is snakeden.WorkerCrashed:
            crashed += 1
            pid = o.error.pid or 0
            if pid not in killer.killed:
                report.violate(f"call {o.spec.index} failed on pid {pid}, which nobody killed")
            elif o.error.signal_name != "SIGKILL":
                report.violate(f"call {o.spec.index}: {_describe(o.error)}, not a SIGKILL")
            failures[pid] += 1
        else:
            report.violate(f"call {o.spec.index}: unexpected {_describe(o.error)}")
    for pid, n in failures.items():
        state = killer.killed.get(pid)
        if state == "idle":
            report.violate(
                f"{n} call(s) failed on pid {pid}, which was idle when killed: they never "
                f"ran and must have been re-dispatched"
            )
        elif n > 1:
            report.violate(f"{n} calls failed on pid {pid}; one call at most ran on it")
    report.figures["idle_kills"] = sum(1 for s in killer.killed.values() if s == "idle")
    await _settle(
        report,
        fr,
        log,
        size,
        crashed=set(killer.killed),
        counters={"calls_crashed": crashed, "restarts": len(killer.killed)},
        bound=bound / 2,
    )
    report.recovery = _recovery(killer.kill_times, log, size)
    report.elapsed = time.monotonic() - t0
    return report


# --- 2. hang storm, 6. mixed storm (crashes and timeouts among normal calls) ----------------------

_CRASH_EXIT = {"os_exit": ("exited with code 7", 7), "sigkill": ("SIGKILL", -9)}


async def mixed_storm(
    front: Front,
    *,
    name: str = "mixed",
    size: int = 4,
    calls: int = 256,
    lanes: int = 32,
    hang: float = 0.08,
    crash: float = 0.1,
    timeout: float = 0.5,
    max_ms: float = 4.0,
    bound: float = 60.0,
    seed: int | None = None,
    plan: list[str] | None = None,
) -> StormReport:
    """``calls`` calls from ``lanes`` callers (or one per entry of ``plan``): a share ``hang``
    hang in C (with ``timeout``), a share ``crash`` kill their own worker (``os._exit(7)`` or
    SIGKILL), the rest are normal. Each gets exactly its own fate: CallTimeout, WorkerCrashed
    with that exit, or its result."""
    seed, rng = _seeded(seed)
    report = StormReport(name, front, seed)
    if plan is None:
        plan = []
        for _ in range(calls):
            r = rng.random()
            if r < hang:
                plan.append("hang")
            elif r < hang + crash:
                plan.append(rng.choice(list(_CRASH_EXIT)))
            else:
                plan.append("normal")
    kinds = list(plan)
    calls = len(kinds)
    log = EventLog()
    fr = make_front(front, size=size, on_event=log)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        hang_log = Path(tmp, "hung")

        def make(i: int) -> CallSpec:
            kind = kinds[i]
            if kind == "hang":
                return CallSpec(i, kind, "hang", (str(hang_log), str(i)), timeout)
            if kind in _CRASH_EXIT:
                return CallSpec(i, kind, "crash", (kind,))
            return CallSpec(i, kind, "work", (i, rng.uniform(0, max_ms)))

        await fr.start()
        load = _Load(make, lambda i: i < calls)
        if not await fr.run(load, lanes, bound):
            report.violate(f"{load.running} calls still unanswered after {bound}s")
        report.lateness = _hang_lateness(hang_log, load.outcomes)
    _tally(report, load.outcomes)
    n_hang = n_crash = 0
    for o in load.outcomes:
        kind, e = o.spec.kind, o.error
        if kind == "normal":
            _expect_ok(report, o)
        elif kind == "hang":
            n_hang += 1
            if type(e) is not snakeden.CallTimeout:
                report.violate(f"hung call {o.spec.index}: got {_got(o)}")
        else:
            n_crash += 1
            text, code = _CRASH_EXIT[kind]
            if type(e) is not snakeden.WorkerCrashed or e.exitcode != code:
                report.violate(f"crashing call {o.spec.index} ({kind}): got {_got(o)}")
            elif text not in str(e):
                report.violate(f"crashing call {o.spec.index}: {text!r} not in {e}")
    for late in report.lateness:
        if late > 5.0:
            report.violate(f"a CallTimeout came {late:.2f}s after its timeout")
    await _settle(
        report,
        fr,
        log,
        size,
        events={"timed_out": n_hang, "crashed": n_crash},
        counters={
            "calls_timed_out": n_hang,
            "calls_crashed": n_crash,
            "restarts": n_hang + n_crash,
        },
        bound=bound / 2,
    )
    report.kills = n_hang + n_crash
    harmed = [o.t1 for o in load.outcomes if o.spec.kind != "normal"]
    report.recovery = _recovery(harmed, log, size)
    report.elapsed = time.monotonic() - t0
    return report


async def hang_storm(
    front: Front,
    *,
    size: int = 4,
    normal: int = 150,
    hung: int = 8,
    lanes: int = 16,
    timeout: float = 1.0,
    bound: float = 60.0,
    seed: int | None = None,
) -> StormReport:
    """``hung`` calls hung in C (``timeout`` each) among ``normal`` ones: the hung ones get
    CallTimeout, promptly; every other call succeeds."""
    seed, rng = _seeded(seed)
    plan = ["hang"] * hung + ["normal"] * normal
    rng.shuffle(plan)
    return await mixed_storm(
        front,
        name="hang",
        size=size,
        lanes=lanes,
        timeout=timeout,
        bound=bound,
        seed=seed,
        plan=plan,
    )


# --- 3. cancel storm ------------------------------------------------------------------------------


async def cancel_storm(
    *,
    size: int = 4,
    calls: int = 300,
    share: float = 0.5,
    aligned: int = 200,
    max_ms: float = 20.0,
    max_delay_ms: float = 30.0,
    cancel_grace: float = 3.0,
    bound: float = 60.0,
    seed: int | None = None,
) -> StormReport:
    """Cancelled callers, two ways. A burst: ``calls`` calls at once, a share ``share`` of them
    cancelled after a random delay (queued or running). Then ``aligned`` calls, one per worker
    at a time, each cancelled about when its reply arrives (the delay is the command's own
    duration, give or take a millisecond): the cancellation often lands in the reply's loop turn.

    Cancelled callers get their own CancelledError, the others their results. Every command ends
    in ``max_ms``, far within ``cancel_grace``, so no worker may be killed, and every worker must
    come free again: the same workers, held all at once by a barrier."""
    seed, rng = _seeded(seed)
    report = StormReport("cancel", "async", seed)
    log = EventLog()
    fr = AsyncFront(size=size, on_event=log, cancel_grace=cancel_grace)
    t0 = time.monotonic()
    await fr.start()
    pool = fr.p
    before = set(pool.worker_pids())
    tasks = [
        asyncio.ensure_future(pool.call("work", i, rng.uniform(0, max_ms))) for i in range(calls)
    ]
    chosen = rng.sample(range(calls), int(calls * share))
    requested: dict[int, bool] = {}

    async def cancel_later(i: int, delay: float) -> None:
        await pace(delay)
        requested[i] = tasks[i].cancel()

    await asyncio.gather(*(cancel_later(i, rng.uniform(0, max_delay_ms) / 1e3) for i in chosen))
    _, pending = await asyncio.wait(tasks, timeout=bound)

    async def aligned_lane(lane: int) -> None:
        for _ in range(lane, aligned, size):
            ms = rng.uniform(1.0, min(max_ms, 8.0))
            i = len(tasks)
            tasks.append(asyncio.ensure_future(pool.call("work", i, ms)))
            await pace((ms + rng.uniform(-0.5, 1.5)) / 1e3)
            requested[i] = tasks[i].cancel()
            await asyncio.wait([tasks[i]], timeout=bound)

    if not pending:
        lanes = [asyncio.ensure_future(aligned_lane(lane)) for lane in range(size)]
        _, pending = await asyncio.wait(lanes, timeout=bound)
        pending |= {t for t in tasks if not t.done()}
    if pending:
        report.violate(f"{len(pending)} calls still unanswered after {bound}s")
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    n_cancelled = 0
    for i, t in enumerate(tasks):
        report.calls += 1
        if t.cancelled():
            n_cancelled += 1
            report.errors["CancelledError"] += 1
            if not requested.get(i):
                report.violate(f"call {i} was cancelled, but its caller never was")
            continue
        exc = t.exception()
        if exc is not None:
            report.errors[type(exc).__name__] += 1
            report.violate(f"call {i}: unexpected {_describe(exc)}")
        elif requested.get(i):
            report.violate(f"call {i}: its caller was cancelled, yet it returned {t.result()!r}")
        elif t.result() != [t.result()[0], i]:
            report.violate(f"call {i} returned {t.result()!r}, not its own result")
        else:
            report.ok += 1
    report.figures["cancelled"] = n_cancelled
    # Every worker must come free (an abandoned call gives its worker back once it answers),
    # and none may have been killed: hold them all at once.
    with tempfile.TemporaryDirectory() as tmp:
        barrier = Barrier(tmp)
        try:
            # Each on a worker of its own: calls that wait for one another must not wait in
            # one worker's pipe (pipelining), and a call with a timeout never does.
            holders = [
                asyncio.ensure_future(
                    pool.call("hold", barrier.announce, barrier.gate, timeout=2 * bound)
                )
                for _ in range(size)
            ]
            held = await asyncio.to_thread(barrier.wait, size, cancel_grace + bound / 2)
            barrier.release(size)
            done, _ = await asyncio.wait(holders, timeout=bound / 2)
            if len(done) < size or len(held) < size:
                report.violate(f"only {len(held)} of {size} workers came free again")
            for h in holders:
                if not h.done():
                    h.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
        finally:
            barrier.close()
    killed = [e for e in log.snapshot() if e.kind in ("crashed", "timed_out", "unhealthy")]
    if killed:
        report.violate(
            f"{len(killed)} worker(s) killed though every command ends in {max_ms} ms: "
            + "; ".join(f"{e.kind} pid {e.pid} ({e.detail})" for e in killed)
        )
    if set(held) != before:
        report.violate(f"the workers changed: {sorted(before)} before, {sorted(held)} after")
    report.kills = len(killed)
    await _settle(report, fr, log, size, counters={"restarts": 0}, bound=bound / 2)
    report.elapsed = time.monotonic() - t0
    return report


# --- 4. garbage storm -----------------------------------------------------------------------------


async def garbage_storm(
    front: Front,
    *,
    size: int = 4,
    normal: int = 150,
    bad: int = 12,
    lanes: int = 16,
    max_ms: float = 4.0,
    bound: float = 60.0,
    seed: int | None = None,
) -> StormReport:
    """``bad`` calls write garbage or absurd length prefixes onto their reply channel, among
    ``normal`` ones: those get ProtocolError (with no timeout set: the host must see the garbage
    itself), the others their results; the host's memory does not balloon."""
    from snakeden._bench.chaos_worker import GARBAGE

    seed, rng = _seeded(seed)
    report = StormReport("garbage", front, seed)
    total = normal + bad
    bad_at = set(rng.sample(range(total), bad))

    def make(i: int) -> CallSpec:
        if i in bad_at:
            return CallSpec(i, "garbage", "garbage", (GARBAGE[i % len(GARBAGE)],))
        return CallSpec(i, "normal", "work", (i, rng.uniform(0, max_ms)))

    log = EventLog()
    # pipeline=1: garbage ends the channel's framing, so with calls in the worker's pipe the
    # replies of those it ran after the garbage are lost with it (ProtocolError: they ran);
    # this storm checks that every other call succeeds.
    fr = make_front(front, size=size, on_event=log, pipeline=1)
    t0 = time.monotonic()
    await fr.start()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load = _Load(make, lambda i: i < total)
    if not await fr.run(load, lanes, bound):
        report.violate(f"{load.running} calls still unanswered after {bound}s")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    report.figures["host_peak_growth_mib"] = round(grown, 1)
    if grown > 256:
        report.violate(f"the host's peak memory grew by {grown:.0f} MiB reading garbage")
    _tally(report, load.outcomes)
    for o in load.outcomes:
        if o.spec.kind == "normal":
            _expect_ok(report, o)
        elif type(o.error) is not snakeden.ProtocolError:
            report.violate(f"garbage call {o.spec.index} ({o.spec.args[0]}): got {_got(o)}")
        elif "broke the protocol" not in str(o.error):
            report.violate(f"garbage call {o.spec.index}: {o.error}")
    await _settle(
        report,
        fr,
        log,
        size,
        events={"crashed": bad},
        counters={"calls_crashed": bad, "restarts": bad},
        bound=bound / 2,
    )
    report.kills = bad
    harmed = [o.t1 for o in load.outcomes if o.spec.kind == "garbage"]
    report.recovery = _recovery(harmed, log, size)
    report.elapsed = time.monotonic() - t0
    return report


# --- 7. memory storm ------------------------------------------------------------------------------


async def memory_storm(
    *,
    size: int = 2,
    calls: int = 120,
    lanes: int = 6,
    mib: int = 8,
    limit_mib: int = 64,
    cap_mib: int = 320,
    ms: float = 20.0,
    check_interval: float = 0.1,
    bound: float = 60.0,
    seed: int | None = None,
) -> StormReport:
    """A busy pool (more callers than workers: the queue never empties) whose every call keeps
    ``mib`` more MiB alive in its worker: with ``max_memory`` set, workers over the limit are
    recycled while the load runs, so no worker ever holds far more than the limit."""
    seed, _ = _seeded(seed)
    report = StormReport("memory", "async", seed)
    log = EventLog()
    fr = AsyncFront(
        size=size,
        on_event=log,
        max_memory=limit_mib * MIB,
        memory_check_interval=check_interval,
    )
    t0 = time.monotonic()
    await fr.start()
    peak_uss = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak_uss
        while sampling:
            for pid in fr.pids():
                with contextlib.suppress(psutil.Error):
                    peak_uss = max(peak_uss, psutil.Process(pid).memory_full_info().uss)
            await pace(0.05)

    sampler = asyncio.ensure_future(sample())
    load = _Load(lambda i: CallSpec(i, "normal", "bomb", (mib, cap_mib, ms)), lambda i: i < calls)
    finished = await fr.run(load, lanes, bound)
    load_end = time.monotonic()
    sampling = False
    await sampler
    if not finished:
        report.violate(f"{load.running} calls still unanswered after {bound}s")
    _tally(report, load.outcomes)
    held: dict[int, int] = {}
    for o in load.outcomes:
        if _expect_ok(report, o):
            pid, mb = o.value
            held[pid] = max(held.get(pid, 0), mb)
    most = max(held.values(), default=0)
    report.figures.update(
        peak_uss_mib=round(peak_uss / MIB, 1),
        most_held_mib=most,
        workers_used=len(held),
        over_memory=log.count("over_memory"),
        recycled=log.count("recycled"),
    )
    if most > 4 * limit_mib:
        report.violate(
            f"a worker held {most} MiB under load with max_memory={limit_mib} MiB: the limit "
            f"is not enforced on a busy pool"
        )
    if peak_uss > (4 * limit_mib + 64) * MIB:
        report.violate(
            f"a worker's USS reached {peak_uss / MIB:.0f} MiB under load with max_memory="
            f"{limit_mib} MiB"
        )
    during = [e for e in log.snapshot() if e.kind == "over_memory" and e.at <= load_end]
    if not during:
        report.violate("no worker was found over max_memory while the load ran")
    if len(held) <= size:
        report.violate(f"only {len(held)} workers served the load: none was recycled")
    await _settle(report, fr, log, size, bound=bound / 2)
    report.elapsed = time.monotonic() - t0
    return report


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


async def cycle_storm(
    front: Front, *, cycles: int = 8, size: int = 2, bound: float = 30.0, seed: int | None = None
) -> StormReport:
    """``cycles`` times: start a pool, put calls through it, close it (idle; with calls in
    flight; with calls queued and ``cancel_pending``; right after killing a worker). Each close
    returns, drains what it promises to, and leaves no process behind."""
    seed, rng = _seeded(seed)
    report = StormReport("cycles", front, seed)
    t0 = time.monotonic()
    for c in range(cycles):
        variant = c % 4
        log = EventLog()
        fr = make_front(front, size=size, on_event=log)
        await fr.start()
        tag = fr.run_tag
        outcomes: list[tuple[int, Any, BaseException | None]] = []
        kwargs: dict[str, Any] = {}
        running: list[Any] = []
        if variant == 0:
            got = await asyncio.gather(*(fr.call("echo", i) for i in range(10)))
            report.calls += 10
            report.ok += sum(g == i for i, g in enumerate(got))
        elif variant in (1, 2):
            # Calls in flight (long enough to still run when close() starts), and more queued.
            n = size * 3
            if isinstance(fr, AsyncFront):
                running = [
                    asyncio.ensure_future(fr.p.call("work", i, 200.0 if i < size else 0.0))
                    for i in range(n)
                ]
                await asyncio.sleep(0)  # a yield: each call takes its worker or its place in line
            else:
                running = [fr.p.submit("work", i, 200.0 if i < size else 0.0) for i in range(n)]
            kwargs = {"cancel_pending": variant == 2}
        else:
            victim = rng.choice(fr.pids())
            os.kill(victim, signal.SIGKILL)
        problem = await fr.close(min(bound, CLOSE_BOUND), **kwargs)
        if problem:
            report.violate(f"cycle {c}: {problem}")
        for i, r in enumerate(running):
            if isinstance(r, asyncio.Future):
                try:
                    outcomes.append((i, await asyncio.wait_for(r, bound), None))
                except Exception as failure:
                    outcomes.append((i, None, failure))
            else:
                outcomes.append((i, *await asyncio.to_thread(_future_outcome, r, bound)))
        for i, value, exc in outcomes:
            report.calls += 1
            if exc is None and value == [value[0], i]:
                report.ok += 1
                continue
            report.errors[type(exc).__name__ if exc else "wrong"] += 1
            in_flight = i < size
            allowed = variant == 2 and not in_flight
            if isinstance(exc, snakeden.PoolClosed) and allowed:
                continue  # queued, and close(cancel_pending=True) said so
            if variant == 2 and isinstance(exc, concurrent.futures.CancelledError):
                continue  # no dispatcher had picked it up yet: cancelled, never sent
            report.violate(f"cycle {c} (variant {variant}) call {i}: {exc and _describe(exc)}")
        left = await asyncio.to_thread(leftovers, tag)
        if left:
            report.violate(f"cycle {c} (variant {variant}): processes left behind: {left}")
    report.elapsed = time.monotonic() - t0
    return report


# --- soak: the storms at the scale, for minutes ------------------------------------------

StormFn = Callable[[], Coroutine[Any, Any, StormReport]]


def soak_storms(quick: bool = False) -> list[tuple[str, StormFn]]:
    """The storms a soak runs, at the issue's scale (``quick``: the test suite's scale)."""
    if quick:
        return [
            ("kill/async", lambda: kill_storm("async")),
            ("kill/sync", lambda: kill_storm("sync")),
            ("hang/async", lambda: hang_storm("async")),
            ("hang/sync", lambda: hang_storm("sync")),
            ("cancel/async", cancel_storm),
            ("garbage/async", lambda: garbage_storm("async")),
            ("garbage/sync", lambda: garbage_storm("sync")),
            ("mixed/sync", lambda: mixed_storm("sync")),
        ]
    big: dict[str, Any] = {"size": 8, "bound": 180.0}
    return [
        ("kill/async", lambda: kill_storm("async", rounds=30, min_calls=800, lanes=64, **big)),
        ("kill/sync", lambda: kill_storm("sync", rounds=30, min_calls=800, lanes=32, **big)),
        ("hang/async", lambda: hang_storm("async", normal=500, hung=50, lanes=64, **big)),
        ("hang/sync", lambda: hang_storm("sync", normal=500, hung=50, lanes=32, **big)),
        ("cancel/async", lambda: cancel_storm(calls=1000, **big)),
        ("garbage/async", lambda: garbage_storm("async", normal=500, bad=50, lanes=64, **big)),
        ("garbage/sync", lambda: garbage_storm("sync", normal=500, bad=50, lanes=32, **big)),
        ("mixed/sync", lambda: mixed_storm("sync", calls=1000, lanes=32, **big)),
    ]


def _soak_table(results: dict[tuple[str, str], list[StormReport]]) -> str:
    head = (
        "| storm | load | runs | calls | failed | kills | re-dispatched | recovery p50 / max "
        "| timeout lateness p50 / max | violations |"
    )
    lines = [head, "|" + "---|" * 10]

    def ms(xs: list[float], f: Callable[[list[float]], float]) -> str:
        return f"{f(xs) * 1e3:.0f} ms" if xs else "-"

    for (name, load), reports in results.items():
        rec = [x for r in reports for x in r.recovery]
        late = [x for r in reports for x in r.lateness]
        redis = [r.redispatched for r in reports if r.redispatched is not None]
        lines.append(
            f"| {name} | {load} | {len(reports)} | {sum(r.calls for r in reports)} "
            f"| {sum(r.calls - r.ok for r in reports)} | {sum(r.kills for r in reports)} "
            f"| {sum(redis) if redis else 'n/a'} "
            f"| {ms(rec, statistics.median)} / {ms(rec, max)} "
            f"| {ms(late, statistics.median)} / {ms(late, max)} "
            f"| {sum(len(r.violations) for r in reports)} |"
        )
    return "\n".join(lines)


def soak_main(argv: Sequence[str]) -> int:
    """``snakeden bench --soak [--minutes N] [--quick] [--only NAMES] [--hogs N]``: run the storms
    over and over, alternately quiet and beside two CPU hogs, for N minutes (at least one round);
    print each storm's figures as it ends and a table at the end. Exit status 1 on any
    violation."""
    parser = argparse.ArgumentParser(
        prog="snakeden bench --soak",
        description="Run the chaos storms at full scale for minutes and report figures.",
    )
    parser.add_argument("--soak", action="store_true", required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long (default 5)")
    parser.add_argument("--quick", action="store_true", help="the test suite's smaller storms")
    parser.add_argument("--only", default="", metavar="NAMES", help="e.g. kill/async,cancel")
    parser.add_argument(
        "--hogs", type=int, default=2, help="CPU hogs for every other round (default 2; 0: none)"
    )
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    storms = soak_storms(args.quick)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        storms = [(n, s) for n, s in storms if any(n == w or n.startswith(w + "/") for w in wanted)]
    if not storms:
        print(f"no storm matches {args.only!r}", file=sys.stderr)
        return 2
    start = time.monotonic()
    deadline = start + args.minutes * 60
    results: dict[tuple[str, str], list[StormReport]] = collections.defaultdict(list)
    loads = [("quiet", 0)] + ([(f"{args.hogs} hogs", args.hogs)] if args.hogs > 0 else [])
    print(
        f"soak: {len(storms)} storms, {' and '.join(name for name, _ in loads)}, for "
        f"{args.minutes:g} min (at least one round) on {os.cpu_count()} CPUs",
        flush=True,
    )
    while True:
        for load, hogs in loads:
            with cpu_hogs(hogs):
                for name, storm in storms:
                    report = asyncio.run(storm())
                    results[(name, load)].append(report)
                    stamp = time.monotonic() - start
                    print(f"[{stamp:7.1f}s] {load:6} {report.summary()}", flush=True)
        if time.monotonic() >= deadline:
            break
    print()
    print(_soak_table(results))
    bad = sum(len(r.violations) for rs in results.values() for r in rs)
    print(f"\n{bad} violations in {time.monotonic() - start:.0f} s", flush=True)
    return 1 if bad else 0
