"""``snakeden bench --soak``: the chaos storms at full scale for minutes, and a table of their
figures."""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._chaos import StormFn, cancel_storm, garbage_storm, hang_storm, kill_storm, mixed_storm
from ._chaos_load import StormReport
from ._chaos_procs import cpu_hogs


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
