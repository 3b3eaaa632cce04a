"""The start/close storm: pools started, used and closed over and over (idle, with calls in
flight, with a worker killed first), each close bounded and nothing left behind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from typing import Any

import snakeden

from ._chaos_load import (
    AsyncFront,
    StormReport,
    _describe,
    _future_outcome,
    _seeded,
    make_front,
)
from ._chaos_procs import CLOSE_BOUND, EventLog, Front, leftovers


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
