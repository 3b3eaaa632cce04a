"""One read of a pool for the observers (metrics, the control socket, ``snakeden top``).

Everything here runs when someone looks (a scrape, a snapshot request), never on a call's path:
it takes the checkout's lock once, copies plain numbers out, and does the slow parts (memory
from ``/proc``) after releasing it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snakeden._stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from snakeden._core import PoolCore


@dataclass(slots=True)
class WorkerView:
    id: str
    pid: int | None
    state: str  # starting, idle, busy, stopping, dead
    calls: int
    busy_time: float  # seconds spent on calls
    age: float  # seconds since it became ready (0 while starting)
    inflight: int
    command: str | None  # what it runs now (None when idle)
    running_for: float | None  # seconds since its current lease began
    rss: int | None = None
    uss: int | None = None
    node: str | None = None  # the cluster node it runs on (None: this machine)

    @property
    def utilization(self) -> float:
        return min(1.0, self.busy_time / self.age) if self.age > 0 else 0.0


@dataclass(slots=True)
class PoolView:
    target: str | None
    state: str
    host_pid: int
    size: int
    max_size: int
    queued: int
    in_flight: int
    calls: dict[str, int]  # by outcome, plus "rejected" and "redispatched"
    restarts: int
    restarts_by_cause: dict[str, int]
    recycled: int
    start_failures: int
    events: dict[str, int]  # lifecycle events by kind
    busy_time: float  # all calls' seconds, including workers long gone
    latency_buckets: list[int]  # per bucket of LATENCY_BUCKETS, then +Inf
    latency_sum: float
    wait_buckets: list[int]
    wait_sum: float
    workers: list[WorkerView] = field(default_factory=list)
    at: float = 0.0  # time.time() of the reading

    @property
    def calls_total(self) -> int:
        return sum(v for k, v in self.calls.items() if k not in ("rejected", "redispatched"))

    def workers_by_state(self) -> dict[str, int]:
        out = dict.fromkeys(("starting", "idle", "busy", "stopping"), 0)
        for w in self.workers:
            if w.state in out:
                out[w.state] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the control socket's answer)."""
        return {
            "target": self.target,
            "state": self.state,
            "host_pid": self.host_pid,
            "size": self.size,
            "max_size": self.max_size,
            "queued": self.queued,
            "in_flight": self.in_flight,
            "calls": self.calls,
            "calls_total": self.calls_total,
            "restarts": self.restarts,
            "restarts_by_cause": self.restarts_by_cause,
            "recycled": self.recycled,
            "start_failures": self.start_failures,
            "events": self.events,
            "busy_time": self.busy_time,
            "latency_mean": self.latency_sum / max(1, sum(self.latency_buckets)),
            "wait_mean": self.wait_sum / max(1, sum(self.wait_buckets)),
            "at": self.at,
            "workers": [
                {
                    "id": w.id,
                    "pid": w.pid,
                    "state": w.state,
                    "calls": w.calls,
                    "busy_time": w.busy_time,
                    "utilization": w.utilization,
                    "age": w.age,
                    "inflight": w.inflight,
                    "command": w.command,
                    "running_for": w.running_for,
                    "rss": w.rss,
                    "uss": w.uss,
                    "node": w.node,
                }
                for w in self.workers
            ],
        }


def read(core: PoolCore, *, memory: bool = False, uss: bool = False) -> PoolView:
    """The pool as it is now. ``memory``: each worker's RSS (a ``/proc`` read per worker);
    ``uss``: also USS (reads smaps: milliseconds per worker, so callers bound how often)."""
    ck = core.checkout
    now = ck.clock()
    with ck.lock:
        c = ck.counters
        workers = [
            WorkerView(
                id=w.id,
                pid=w.pid,
                state=w.state.value,
                calls=w.calls,
                busy_time=w.busy_time,
                age=now - w.ready_at if w.ready_at is not None else 0.0,
                inflight=w.inflight,
                command=(w.current_command or None) if w.inflight > 0 else None,
                running_for=now - w.leased_at if w.inflight > 0 else None,
                node=w.proc.node if w.proc is not None else None,
            )
            for w in ck.workers.values()
        ]
        view = PoolView(
            target=core.config.target,
            state=ck.phase.value,
            host_pid=os.getpid(),
            size=ck.size,
            max_size=ck.upper,
            queued=len(ck.waiters),
            in_flight=ck.leased,
            calls={
                "ok": c.calls_ok,
                "failed": c.calls_failed,
                "timeout": c.calls_timed_out,
                "crashed": c.calls_crashed,
                "cancelled": c.calls_cancelled,
                "rejected": c.calls_rejected,
                "redispatched": c.calls_redispatched,
                "taken_back": c.calls_taken_back,
            },
            restarts=c.restarts,
            restarts_by_cause=dict(c.restarts_by_cause),
            recycled=c.recycled,
            start_failures=c.start_failures,
            events=dict(core.events.counts),
            busy_time=c.latency_sum,
            latency_buckets=list(c.latency_buckets),
            latency_sum=c.latency_sum,
            wait_buckets=list(c.wait_buckets),
            wait_sum=c.wait_sum,
            workers=workers,
            at=time.time(),
        )
    if memory or uss:
        for w in view.workers:
            # A remote worker's pid is another machine's: this one's /proc knows nothing of it.
            if w.pid is not None and w.state != "dead" and w.node is None:
                w.rss, w.uss = _memory(w.pid, uss)
    return view


def _memory(pid: int, uss: bool) -> tuple[int | None, int | None]:
    try:
        import psutil

        p = psutil.Process(pid)
        if uss:
            full = p.memory_full_info()
            return int(full.rss), int(full.uss)
        return int(p.memory_info().rss), None
    except Exception:  # gone meanwhile, or not ours to read
        return None, None


def cumulative(buckets: list[int]) -> list[tuple[str, int]]:
    """Prometheus ``le`` buckets from per-bucket counts."""
    out = []
    total = 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out
