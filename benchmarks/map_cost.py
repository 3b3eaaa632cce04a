"""``map`` against multiprocessing.Pool, with the CPU each side spends per item.

``python benchmarks/map_cost.py [--items 20000] [--reps 9] [--chunksizes 64,None]``

The bench's map rows (``snakeden bench --only throughput``) in one process: ``map("echo",
[b"x"] * items)`` on a Pool, a SyncPool and a ``multiprocessing.Pool`` (fork), two workers
each, interleaved round by round. Per contender: the median rate, its ratio to
multiprocessing.Pool's (>1 is faster), and the least CPU time per item over the rounds, for
the host process (all its threads) and for the workers, from ``/proc/<pid>/task/*/schedstat``
(nanoseconds on a CPU). On a machine shared with other work the rates swing from round to
round; the CPU per item swings far less, and is what the rate is made of when the CPUs are
busy.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import snakeden
from snakeden._bench import peer_tasks


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


MP = "multiprocessing.Pool"
Sample = tuple[float, float, float]  # items/s, host µs/item, workers µs/item


async def _measure(run: Callable[[], Any], workers: list[int], n: int) -> Sample:
    me = [os.getpid()]
    h0, w0, t0 = _cpu_s(me), _cpu_s(workers), time.perf_counter()
    result = run()
    if asyncio.iscoroutine(result):
        result = await result
    dt = time.perf_counter() - t0
    if len(result) != n:
        raise RuntimeError(f"map returned {len(result)} results for {n} items")
    return n / dt, (_cpu_s(me) - h0) / n * 1e6, (_cpu_s(workers) - w0) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--chunksizes", default="64,None")
    opts = parser.parse_args()
    n = opts.items
    sizes = [None if c == "None" else int(c) for c in opts.chunksizes.split(",")]
    items = [b"x"] * n
    samples: dict[tuple[str, int | None], list[Sample]] = {}
    mp = multiprocessing.get_context("fork").Pool(2)
    try:
        mp.map(peer_tasks.echo, items[:200])
        mp_pids = [p.pid for p in mp._pool]  # type: ignore[attr-defined]
        async with snakeden.Pool("snakeden._bench.workers", size=2) as pool:
            with snakeden.SyncPool("snakeden._bench.workers", size=2) as spool:
                await pool.map("echo", items[:200], chunksize=64)
                list(spool.map("echo", items[:200], chunksize=64))
                a_pids = _pids(pool)
                s_pids = _pids(spool)
                for _ in range(opts.reps):
                    for cs in sizes:
                        kw = {} if cs is None else {"chunksize": cs}
                        runs: list[tuple[str, Callable[[], Any], list[int]]] = [
                            (MP, functools.partial(mp.map, peer_tasks.echo, items, **kw), mp_pids),
                            ("Pool", functools.partial(pool.map, "echo", items, **kw), a_pids),
                            ("SyncPool", functools.partial(_listed, spool, items, kw), s_pids),
                        ]
                        for name, run, workers in runs:
                            sample = await _measure(run, workers, n)
                            samples.setdefault((name, cs), []).append(sample)
    finally:
        mp.terminate()
        mp.join()
    print(f"{n:,} items of b'x', 2 workers, {opts.reps} rounds; load average {_load()}")
    print(
        "| chunksize | contender | items/s (median) | x multiprocessing.Pool "
        "| host µs/item | workers µs/item |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for cs in sizes:
        ref = statistics.median(s[0] for s in samples[(MP, cs)])
        for name in (MP, "Pool", "SyncPool"):
            got = samples[(name, cs)]
            rate = statistics.median(s[0] for s in got)
            host = min(s[1] for s in got)
            workers = min(s[2] for s in got)
            label = "default" if cs is None else cs
            figures = f"{rate:,.0f} | {rate / ref:.2f} | {host:.2f} | {workers:.2f}"
            print(f"| {label} | {name} | {figures} |")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _listed(pool: snakeden.SyncPool, items: list[Any], kw: dict[str, int]) -> list[Any]:
    return list(pool.map("echo", items, **kw))


def _pids(pool: snakeden.Pool | snakeden.SyncPool) -> list[int]:
    return pool._core.pids()  # a benchmark may read the worker pids


if __name__ == "__main__":
    asyncio.run(main())
