"""``snakeden top SOCKET`` (a live table, each second) and ``snakeden stats SOCKET [--json]``.

Both read a pool's control socket (:mod:`snakeden._control`). ``render`` turns one snapshot
into a ``rich`` renderable and is what the tests check; ``top`` only refreshes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def add_parsers(sub: Any) -> None:
    top = sub.add_parser("top", help="live view of a pool's control socket")
    top.add_argument("socket", help="the pool's control socket (snakeden.control.serve)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    stats = sub.add_parser("stats", help="print one snapshot of a pool's control socket")
    stats.add_argument("socket")
    stats.add_argument("--json", action="store_true", help="the raw JSON snapshot")


def _duration(s: float | None) -> str:
    if s is None:
        return ""
    if s < 1:
        return f"{s * 1e3:.0f}ms"
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _bytes(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:,.1f} MiB"


def render(snap: dict[str, Any]) -> Any:
    """One snapshot as a header and a table of workers (a ``rich`` renderable)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    calls = snap.get("calls", {})
    rates = snap.get("rates", {})
    causes = ", ".join(f"{k} {v}" for k, v in sorted(snap.get("restarts_by_cause", {}).items()))
    head = Text()
    head.append(f"{snap.get('name', '?')}", style="bold")
    head.append(f"  {snap.get('state', '?')}  host pid {snap.get('host_pid', '?')}\n")
    head.append(
        f"workers {len(snap.get('workers', []))}/{snap.get('size', '?')}  "
        f"in flight {snap.get('in_flight', 0)}  queued {snap.get('queued', 0)}  "
        f"{rates.get('calls_per_s', 0.0):,.1f} calls/s  "
        f"utilisation {rates.get('utilization', 0.0):.0%}\n"
    )
    head.append(
        f"calls ok {calls.get('ok', 0)}  failed {calls.get('failed', 0)}  "
        f"timeout {calls.get('timeout', 0)}  crashed {calls.get('crashed', 0)}  "
        f"rejected {calls.get('rejected', 0)}  mean {_duration(snap.get('latency_mean'))}  "
        f"restarts {snap.get('restarts', 0)}" + (f" ({causes})" if causes else "")
    )
    table = Table(expand=False)
    for col, justify in (
        ("worker", "left"),
        ("pid", "right"),
        ("state", "left"),
        ("command", "left"),
        ("for", "right"),
        ("calls", "right"),
        ("util", "right"),
        ("rss", "right"),
        ("age", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for w in snap.get("workers", []):
        table.add_row(
            w["id"],
            str(w["pid"] or ""),
            w["state"],
            w["command"] or "",
            _duration(w["running_for"]),
            str(w["calls"]),
            f"{w['utilization']:.0%}",
            _bytes(w["rss"]),
            _duration(w["age"]),
        )
    return Group(head, table)


def run_stats(ns: argparse.Namespace) -> int:
    from snakeden._control import request

    try:
        snap = request(ns.socket)
    except OSError as exc:
        print(f"snakeden stats: cannot reach {ns.socket}: {exc}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps(snap, indent=2))
        return 0
    from rich.console import Console

    Console().print(render(snap))
    return 0


def run_top(ns: argparse.Namespace) -> int:
    from rich.live import Live
    from rich.text import Text

    from snakeden._control import request

    try:
        with Live(Text("connecting..."), auto_refresh=False, screen=False) as live:
            while True:
                try:
                    view: Any = render(request(ns.socket))
                except (OSError, ValueError) as exc:
                    view = Text(f"cannot reach {ns.socket}: {exc}")
                live.update(view, refresh=True)
                time.sleep(ns.interval)  # the refresh period of a display, not a synchronisation
    except KeyboardInterrupt:
        return 0
