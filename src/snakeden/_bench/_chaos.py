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

import asyncio
import collections
import contextlib
import random
import resource
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil

import snakeden

from ._chaos_load import (
    AsyncFront,
    CallSpec,
    Killer,
    StormReport,
    _describe,
    _expect_ok,
    _got,
    _hang_lateness,
    _Load,
    _recovery,
    _seeded,
    _settle,
    _tally,
    make_front,
)
from ._chaos_procs import MIB, Barrier, EventLog, Front, pace


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
    # Default settings (pipelining): a garbage call hangs after its garbage, so the calls
    # behind it never begin and must all run elsewhere.
    fr = make_front(front, size=size, on_event=log)
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


# --- soak: the storms at the scale, for minutes ------------------------------------------

StormFn = Callable[[], Coroutine[Any, Any, StormReport]]
