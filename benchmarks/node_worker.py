"""Node.js worker vs Python worker: trivial-call latency and throughput through the same pool.

Usage: python benchmarks/node_worker.py [--calls N]. Needs `node` and `npm ci` in node/.
Latency: one caller, sequential `add(i, 1)` on a SyncPool of one worker (median and p99 of the
round trip). Throughput: an asyncio Pool of 2 workers, 64 concurrent callers, `add` calls per
second. Both runtimes get the same pool, options and host; only the worker program differs.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import time
from typing import Any

import snakeden

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNTIMES: dict[str, dict[str, Any]] = {
    "python (spawn)": {
        "command": [sys.executable, "-m", "snakeden.worker", "snakeden.conformance.pyworker"]
    },
    "python (fork)": {"target": "snakeden.conformance.pyworker", "start_method": "fork"},
    "node": {
        "command": [
            "node",
            str(ROOT / "node" / "bin" / "snakeden-worker.js"),
            str(ROOT / "node" / "examples" / "conformance_worker.js"),
        ]
    },
}


def latency(opts: dict[str, Any], calls: int) -> tuple[float, float]:
    opts = dict(opts)
    target = opts.pop("target", None)
    with snakeden.SyncPool(target, size=1, **opts) as pool:
        for i in range(500):  # warm-up (JIT, caches)
            pool.call("add", i, 1)
        times = []
        for i in range(calls):
            t = time.perf_counter()
            pool.call("add", i, 1)
            times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


async def throughput(opts: dict[str, Any], calls: int, callers: int = 64) -> float:
    opts = dict(opts)
    target = opts.pop("target", None)
    async with snakeden.Pool(target, size=2, **opts) as pool:
        await asyncio.gather(*(pool.call("add", i, 1) for i in range(500)))
        per = calls // callers

        async def caller() -> None:
            for i in range(per):
                await pool.call("add", i, 1)

        t = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return per * callers / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ns = ap.parse_args()
    print(f"{'worker':<16} {'p50 us':>8} {'p99 us':>8} {'calls/s (2 workers)':>20}")
    for name, opts in RUNTIMES.items():
        p50, p99 = latency(opts, ns.calls)
        rate = asyncio.run(throughput(opts, ns.calls * 4))
        print(f"{name:<16} {p50:8.1f} {p99:8.1f} {rate:20,.0f}")


if __name__ == "__main__":
    main()
