"""What observing a pool costs a trivial call: ``python benchmarks/observability_cost.py``.

Runs each mode in a fresh interpreter, interleaved, several rounds, and prints the median
per-call latency of ``echo(1)`` on a one-worker pool (sequential calls: pure overhead).

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
            t0 = time.perf_counter()
            for _ in range(n):
                pool.call("echo", 1)
            dt = time.perf_counter() - t0
    else:
        async def main():
            async with snakeden.Pool("snakeden.examples", size=1) as pool:
                observe(pool)
                for _ in range(2000):
                    await pool.call("echo", 1)
                t0 = time.perf_counter()
                for _ in range(n):
                    await pool.call("echo", 1)
                return time.perf_counter() - t0
        dt = asyncio.run(main())
    print(json.dumps(dt / n * 1e6))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="source dir (containing snakeden/) of the tree to compare")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--scrape-every", type=float, default=1.0)
    args = ap.parse_args()
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    modes = [("off", here), ("metrics", here), ("tracing", here)]
    if args.base:
        modes.insert(0, ("base", args.base))
    for front in ("sync", "async"):
        results: dict[str, list[float]] = {m: [] for m, _ in modes}
        for _ in range(args.rounds):
            # A fresh order each round: a machine's drift must not favour whichever runs first.
            for mode, src in random.sample(modes, len(modes)):
                env = {**os.environ, "PYTHONPATH": src}
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, mode, front, str(args.n), str(args.scrape_every)],
                    env=env, capture_output=True, check=True, text=True,
                ).stdout  # fmt: skip
                results[mode].append(json.loads(out))
        ref = statistics.median(results["base" if args.base else "off"])
        print(f"{front} front, echo(1), median of {args.rounds} rounds x {args.n} calls:")
        for mode, _ in modes:
            med = statistics.median(results[mode])
            print(f"  {mode:8s} {med:7.2f} us/call  ({(med / ref - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
