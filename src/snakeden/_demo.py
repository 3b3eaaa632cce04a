"""``python -m snakeden demo``: what the library is for, in a few seconds."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from snakeden import CallTimeout, Pool, WorkerCrashed


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def _demo(size: int) -> None:
    t0 = time.perf_counter()
    async with Pool("snakeden.examples", size=size, call_timeout=None) as pool:
        _say(f"pool of {size} workers ready in {(time.perf_counter() - t0) * 1e3:.0f} ms: {pool}")

        t = time.perf_counter()
        results = await asyncio.gather(*(pool.call("work", 200 + i % 7) for i in range(2000)))
        dt = time.perf_counter() - t
        _say(
            f"2000 concurrent calls done in {dt:.2f}s ({2000 / dt:,.0f}/s); {len(set(results))} "
            f"distinct digests"
        )

        print(f"  by reference: math.factorial(20) = {await pool.call(math.factorial, 20)}")

        victim = asyncio.create_task(pool.call("crash", "segfault"))
        others = [asyncio.create_task(pool.call("work", 5000)) for _ in range(size * 2)]
        try:
            await victim
        except WorkerCrashed as exc:
            first = str(exc).splitlines()[0]
            _say(f"a worker segfaulted mid-call; only its caller saw it:\n  {first}")
        done = await asyncio.gather(*others)
        _say(f"the {len(done)} calls running beside it all finished fine")

        t = time.perf_counter()
        try:
            await pool.call("hang_in_c", 3600, timeout=1.0)
        except CallTimeout as exc:
            _say(f"a call hung in C code; timed out after {time.perf_counter() - t:.2f}s:\n  {exc}")
        await pool.wait_ready(timeout=30)
        print(f"  pool back to {size} ready workers: {await pool.call('add', 2, 3) == 5}")
        stats = pool.stats()
        _say("stats:")
        for field in (
            "workers",
            "ready",
            "busy",
            "calls_ok",
            "calls_failed",
            "calls_crashed",
            "calls_timed_out",
            "restarts",
        ):
            print(f"  {field:16} {getattr(stats, field)}")
        print(f"  call latency     {stats.call_latency}")
        print(f"  checkout wait    {stats.checkout_wait}")
    _say(f"pool closed, every worker stopped: {pool}")


def run_demo(size: int = 4) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_demo(size))
    return 0
