"""What observing a pool costs a trivial call: ``python benchmarks/observability_cost.py``.

Runs each mode in a fresh interpreter, interleaved, several rounds, and prints the median
per-call latency of ``echo(1)`` on a one-worker pool (sequential calls: pure overhead), and
the host process's CPU time per call (what the host's own code costs, which is steadier than
wall time on a machine shared with other work).

Modes: ``off`` (this tree, nothing registered), ``metrics`` (a Prometheus collector registered
and scraped every ``--scrape-every`` seconds meanwhile, default 1 s: 15 times as often as
Prometheus' default), ``tracing``
(``snakeden.tracing.instrument`` with an SDK provider and no exporter), and, with
``--base DIR``, ``base``: another source tree (e.g. ``git archive`` of the commit before the
metrics counters) for the cost of the always-on counters themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time
    import snakeden
    mode, front, n, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

    def observe(pool):
        if mode == "metrics":
            import prometheus_client
            from snakeden import metrics
            reg = prometheus_client.CollectorRegistry()
            metrics.register(pool, reg)
            stop = threading.Event()
            def scrape():
                while not stop.wait(every):
                    prometheus_client.generate_latest(reg)
            threading.Thread(target=scrape, daemon=True).start()
        elif mode == "tracing":
            from opentelemetry.sdk.trace import TracerProvider
            from snakeden import tracing
            tracing.instrument(pool, tracer_provider=TracerProvider())

    if front == "sync":
        with snakeden.SyncPool("snakeden.examples", size=1) as pool:
            observe(pool)
            for _ in range(2000):
                pool.call("echo", 1)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                pool.call("echo", 1)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    else:
        async def main():
            async with snakeden.Pool("snakeden.examples", size=1) as pool:
                observe(pool)
                for _ in range(2000):
                    await pool.call("echo", 1)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(n):
                    await pool.call("echo", 1)
                return time.perf_counter() - t0, time.process_time() - c0
        dt, cpu = asyncio.run(main())
    print(json.dumps([dt / n * 1e6, cpu / n * 1e6]))
    """
)


MICRO = textwrap.dedent(
    """
    import time
    from snakeden._checkout import Checkout, Phase, ThreadWaiter
    from snakeden._config import PoolConfig
    from snakeden._handle import WorkerHandle, WState
    ck = Checkout(PoolConfig(size=1))
    ck.phase = Phase.RUNNING
    w = WorkerHandle("w1", 0.0, None)
    ck.workers[w.id] = w
    w.move(WState.IDLE)
    ck.idle.append(w)
    best = 1e9
    for _ in range(30):
        t0 = time.perf_counter()
        for _ in range(20000):
            got, _g = ck.acquire(ThreadWaiter)
            ck.release(got, "ok", 0.0, 0.00007)
        best = min(best, (time.perf_counter() - t0) / 20000 * 1e9)
    print(best)
    """
)


def micro(base: str, here: str, rounds: int) -> None:
    """The checkout step alone (acquire + release of an idle worker), where the always-on
    counters live: best of many runs, so load from other processes mostly drops out."""
    res: dict[str, list[float]] = {"base": [], "off": []}
    for _ in range(rounds):
        for mode, src in random.sample([("base", base), ("off", here)], 2):
            out = subprocess.run(
                [sys.executable, "-c", MICRO],
                env={**os.environ, "PYTHONPATH": src}, capture_output=True, check=True, text=True,
            ).stdout  # fmt: skip
            res[mode].append(float(out))
    b, o = min(res["base"]), min(res["off"])
    print(f"checkout acquire+release, best of {rounds} x 30 x 20000:")
    print(f"  base {b:6.0f} ns   off {o:6.0f} ns   added {o - b:+5.0f} ns per call")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="source dir (containing snakeden/) of the tree to compare")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--scrape-every", type=float, default=1.0)
    ap.add_argument("--micro", action="store_true", help="only the checkout step (needs --base)")
    args = ap.parse_args()
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if args.micro:
        micro(args.base, here, args.rounds)
        return
    modes = [("off", here), ("metrics", here), ("tracing", here)]
    if args.base:
        modes.insert(0, ("base", args.base))
    for front in ("sync", "async"):
        results: dict[str, list[list[float]]] = {m: [] for m, _ in modes}
        for _ in range(args.rounds):
            # A fresh order each round: a machine's drift must not favour whichever runs first.
            for mode, src in random.sample(modes, len(modes)):
                env = {**os.environ, "PYTHONPATH": src}
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, mode, front, str(args.n), str(args.scrape_every)],
                    env=env, capture_output=True, check=True, text=True,
                ).stdout  # fmt: skip
                results[mode].append(json.loads(out))
        ref = results["base" if args.base else "off"]
        ref_wall = statistics.median(r[0] for r in ref)
        ref_cpu = statistics.median(r[1] for r in ref)
        print(f"{front} front, echo(1), median of {args.rounds} rounds x {args.n} calls:")
        for mode, _ in modes:
            wall = statistics.median(r[0] for r in results[mode])
            cpu = statistics.median(r[1] for r in results[mode])
            print(
                f"  {mode:8s} wall {wall:7.2f} us/call ({(wall / ref_wall - 1) * 100:+5.1f}%)  "
                f"host CPU {cpu:7.2f} us/call ({(cpu / ref_cpu - 1) * 100:+5.1f}%)"
            )


if __name__ == "__main__":
    main()
