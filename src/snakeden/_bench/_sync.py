"""The scenarios for pools with a blocking front, written once against :class:`SyncHandle`.

Each peer (and snakeden's ``SyncPool``) gets a small adapter; the scenario code is shared so every
contender is measured the same way.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from snakeden._bench._common import (
    COLDSTART_PRELOAD,
    MEMORY_PRELOAD,
    Context,
    NotApplicable,
    Outcome,
    Settings,
    check_loaded,
    pin_caller_and_pool,
    record_memory,
    wait_for_file,
)


class SyncHandle(abc.ABC):
    """A pool of ``size`` workers behind a blocking API. Commands are named after
    :mod:`snakeden._bench.peer_tasks` functions ("echo", "pid_hold", ...)."""

    #: What the report says about how this contender was driven, per scenario.
    api: dict[str, str] = {}
    supports_timeout = False
    #: The same contender with its throughput settings tuned (snakeden: the deepest pipeline).
    tuned: type[SyncHandle] | None = None

    def __init__(self, size: int, preload: tuple[str, ...] = ()) -> None:
        self.size = size
        self.preload = preload
        self._broken = threading.Event()
        self.open()

    # -- what adapters implement ---------------------------------------------------------------
    @abc.abstractmethod
    def open(self) -> None:
        """Start the pool (again, after :meth:`recreate`)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the pool and its workers, without waiting for stuck calls."""

    @abc.abstractmethod
    def call(self, command: str, *args: Any) -> Any:
        """One blocking call."""

    @abc.abstractmethod
    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        """Start one call; its future."""

    def map(self, command: str, items: list[Any], chunksize: int | None) -> list[Any]:
        """``chunksize=None``: the library's default (its own automatic size, or 1)."""
        raise NotApplicable("no map")

    def _submit_with_timeout(self, command: str, timeout: float, *args: Any) -> cf.Future[Any]:
        raise NotApplicable("no per-call timeout that kills the worker")

    def session(self) -> contextlib.AbstractContextManager[Callable[..., Any]] | None:
        """A session whose calls all go to one worker, as its ``call`` (snakeden only)."""
        return None

    def broken_by(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the whole pool must be recreated by the caller."""
        return False

    def info(self) -> dict[str, str]:
        return {}

    # -- shared machinery ----------------------------------------------------------------------
    @property
    def broken(self) -> bool:
        return self._broken.is_set()

    def _watch(self, future: cf.Future[Any]) -> cf.Future[Any]:
        def done(f: cf.Future[Any]) -> None:
            exc = None if f.cancelled() else f.exception()
            if exc is not None and self.broken_by(exc):
                self._broken.set()

        future.add_done_callback(done)
        return future

    def submit(self, command: str, *args: Any) -> cf.Future[Any]:
        try:
            return self._watch(self._submit(command, *args))
        except Exception as exc:
            if self.broken_by(exc):
                self._broken.set()
            raise

    def submit_with_timeout(self, command: str, timeout: float, *args: Any) -> cf.Future[Any]:
        return self._watch(self._submit_with_timeout(command, timeout, *args))

    def recreate(self) -> None:
        """What the caller of a pool that does not heal itself must do: a new pool."""
        self.close()
        self._broken.clear()
        self.open()

    def __enter__(self) -> SyncHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_all(
    h: SyncHandle, count: int, hold: float, required: tuple[str, ...] = (), timeout: float = 600.0
) -> set[int]:
    """Send rounds of ``count`` concurrent calls (each sleeping ``hold``) until ``count`` distinct
    workers have answered (cumulatively); return their pids. With ``required``, also check that
    every worker has imported those modules."""
    seen: set[int] = set()
    deadline = time.perf_counter() + timeout
    while len(seen) < count:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {len(seen)} of {count} workers answered in {timeout} s")
        if required:
            futures = [h.submit("loaded_hold", hold, list(required)) for _ in range(count)]
            seen |= check_loaded((f.result(timeout=timeout) for f in futures), required)
        else:
            futures = [h.submit("pid_hold", hold) for _ in range(count)]
            seen.update(f.result(timeout=timeout) for f in futures)
    return seen


def probe_capacity(
    h: SyncHandle, s: Settings, t0: float, exclude: int | None, outcome: Outcome
) -> float | None:
    """Rounds of ``size`` concurrent calls until one round is answered by ``size`` distinct
    workers (none of them ``exclude``); seconds since ``t0``, or None past the deadline. Pools the
    caller must recreate are recreated as soon as they report being broken."""
    deadline = t0 + s.recovery_deadline_s
    round_timeout = max(2.0, 50 * s.hold_s)
    while time.perf_counter() < deadline:
        if h.broken:
            h.recreate()
            outcome.note("the pool broke: the caller recreated it (counted in the recovery time)")
        try:
            futures = [h.submit("pid_hold", s.hold_s) for _ in range(h.size)]
        except Exception:
            time.sleep(s.hold_s)
            continue
        pending: set[cf.Future[Any]] = set(futures)
        round_end = time.perf_counter() + round_timeout
        while pending and not h.broken and time.perf_counter() < round_end:
            _, pending = cf.wait(pending, timeout=0.005)
        pids = {f.result() for f in futures if f.done() and not f.cancelled() and not f.exception()}
        if not pending and len(pids) == h.size and exclude not in pids:
            return time.perf_counter() - t0
    return None


def _submit_rate(h: SyncHandle, n: int, warmup: int) -> float:
    """Calls per second for ``n`` trivial calls submitted at once (after ``warmup`` of them)."""
    for f in [h.submit("echo", b"x") for _ in range(warmup)]:
        f.result()
    t0 = time.perf_counter()
    futures = [h.submit("echo", b"x") for _ in range(n)]
    for f in futures:
        f.result()
    return n / (time.perf_counter() - t0)


def run_scenario(
    h_factory: type[SyncHandle], scenario: str, variant: str | None, s: Settings, ctx: Context
) -> Outcome:
    out = Outcome()
    if scenario == "latency":
        with h_factory(s.size) as h:
            out.info.update(h.info())
            probe_all(h, s.size, s.hold_s)  # every worker exists before pinning
            pin_caller_and_pool(out)
            for _ in range(s.warmup_calls):
                h.call("echo", b"x")
            for _ in range(s.latency_calls):
                t0 = time.perf_counter()
                h.call("echo", b"x")
                out.add("call_s", time.perf_counter() - t0)
            out.note(f"one call at a time: {h.api.get('call', 'call')}")
            session = h.session()
            if session is not None:
                with session as call:
                    for _ in range(s.warmup_calls):
                        call("echo", b"x")
                    for _ in range(s.latency_calls):
                        t0 = time.perf_counter()
                        call("echo", b"x")
                        out.add("session_call_s", time.perf_counter() - t0)
                out.note("session row: the same call in a session, same pool")
    elif scenario == "throughput":
        with h_factory(s.size) as h:
            out.info.update(h.info())
            n = s.throughput_calls
            out.add("submit_calls_per_s", _submit_rate(h, n, s.warmup_calls))
            out.note(f"{n} calls in flight: {h.api.get('submit', 'submit')} each, then wait all")
            items = [b"x"] * n
            try:
                h.map("echo", items[: s.warmup_calls], s.chunksize)
                t0 = time.perf_counter()
                results = h.map("echo", items, s.chunksize)
                out.add("map_calls_per_s", n / (time.perf_counter() - t0))
                if len(results) != n:
                    raise RuntimeError(f"map returned {len(results)} results for {n} items")
                out.note(f"bulk: {h.api.get('map', 'map')} with chunksize={s.chunksize}")
                h.map("echo", items[: s.warmup_calls], None)
                t0 = time.perf_counter()
                results = h.map("echo", items, None)
                out.add("map_default_calls_per_s", n / (time.perf_counter() - t0))
                if len(results) != n:
                    raise RuntimeError(f"map returned {len(results)} results for {n} items")
            except NotApplicable as exc:
                out.note(f"bulk map n/a: {exc}")
        if h_factory.tuned is not None:
            with h_factory.tuned(s.size) as h:
                out.add("pipelined_calls_per_s", _submit_rate(h, n, s.warmup_calls))
                out.note(f"tuned: {h.info().get('tuned', '')}")
    elif scenario == "payload":
        with h_factory(s.size) as h:
            out.info.update(h.info())
            probe_all(h, s.size, s.hold_s)
            pin_caller_and_pool(out)
            for size, calls in s.payload:
                data = os.urandom(size)
                if len(h.call("echo", data)) != size:
                    raise RuntimeError("the echo came back with a different size")
                for _ in range(calls):
                    t0 = time.perf_counter()
                    h.call("echo", data)
                    out.add(f"rtt_s_{size}", time.perf_counter() - t0)
    elif scenario == "coldstart":
        assert variant is not None
        count = int(variant)
        t0 = time.perf_counter()
        with h_factory(count, COLDSTART_PRELOAD) as h:
            probe_all(h, count, s.hold_s, COLDSTART_PRELOAD)
            out.add("ready_s", time.perf_counter() - t0)
            out.note(f"start-up imports: {h.api.get('init', 'an initializer imports them')}")
            out.info.update(h.info())
    elif scenario == "memory":
        with h_factory(s.memory_size, MEMORY_PRELOAD) as h:
            pids = probe_all(h, s.memory_size, s.hold_s, MEMORY_PRELOAD)
            record_memory(out, pids)
            out.info.update(h.info())
    elif scenario == "kill":
        with h_factory(s.size) as h:
            out.info.update(h.info())
            probe_all(h, s.size, s.hold_s)
            _kill(h, s, ctx, out)
    elif scenario == "hang":
        if not h_factory.supports_timeout:
            raise NotApplicable("no per-call timeout that kills the worker")
        with h_factory(s.size) as h:
            out.info.update(h.info())
            probe_all(h, s.size, s.hold_s)
            _hang(h, s, out)
    else:
        raise NotApplicable(scenario)
    return out


def _error_stamp(future: cf.Future[Any], stamps: dict[str, float]) -> None:
    future.add_done_callback(lambda f: stamps.setdefault("done", time.perf_counter()))


def _describe(future: cf.Future[Any]) -> str:
    if future.cancelled():
        return "cancelled"
    exc = future.exception()
    if exc is None:
        return f"returned {future.result()!r} (no error!)"
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _kill(h: SyncHandle, s: Settings, ctx: Context, out: Outcome) -> None:
    path = os.path.join(ctx.tmpdir, "victim.pid")
    future = h.submit("announce_and_sleep", path, 3600.0)
    victim = int(wait_for_file(path, timeout=30))
    stamps: dict[str, float] = {}
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    _error_stamp(future, stamps)
    capacity = probe_capacity(h, s, t0, victim, out)
    cf.wait([future], timeout=max(0.0, t0 + s.kill_error_wait_s - time.perf_counter()))
    if "done" in stamps:
        out.add("error_s", stamps["done"] - t0)
        out.note(f"the caller got {_describe(future)}")
    else:
        out.note(f"the killed call never failed (waited {s.kill_error_wait_s:g} s): result lost")
    if capacity is None:
        out.note(f"capacity not back within {s.recovery_deadline_s:g} s")
    else:
        out.add("capacity_s", capacity)


def _hang(h: SyncHandle, s: Settings, out: Outcome) -> None:
    stamps: dict[str, float] = {}
    t0 = time.perf_counter()
    future = h.submit_with_timeout("sleep_c", s.hang_timeout_s, s.hang_sleep_s)
    _error_stamp(future, stamps)
    cf.wait([future], timeout=s.hang_sleep_s + 30)
    if "done" in stamps:
        out.add("error_s", stamps["done"] - t0)
        out.note(f"the caller got {_describe(future)}")
    capacity = probe_capacity(h, s, t0, None, out)
    if capacity is None:
        out.note(f"capacity not back within {s.recovery_deadline_s:g} s")
    else:
        out.add("capacity_s", capacity)
