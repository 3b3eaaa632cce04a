"""Counters and latency reservoirs behind ``pool.stats()``."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, assert_never

#: Upper bounds (seconds) of the cumulative histograms of call latency and checkout wait that
#: metrics exporters read (``snakeden.metrics``). Fixed, so the release step is one bisect.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

_FOLD_AT = 512  # two floats per call: fold every 256 calls

#: How a call ended, as the core counts it (``calls_ok``, ``calls_failed``, ...).
Outcome = Literal["ok", "failed", "timeout", "crashed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency percentiles in seconds over the most recent samples (``count`` of them)."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> Percentiles:
        if not samples:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        s = sorted(samples)
        n = len(s)

        def pick(q: float) -> float:
            return s[min(n - 1, int(q * n))]

        return cls(n, pick(0.50), pick(0.90), pick(0.99), s[-1])

    def __str__(self) -> str:
        return (
            f"p50={self.p50 * 1e3:.2f}ms p90={self.p90 * 1e3:.2f}ms "
            f"p99={self.p99 * 1e3:.2f}ms max={self.max * 1e3:.2f}ms (n={self.count})"
        )


@dataclass(frozen=True, slots=True)
class PoolStats:
    """An immutable snapshot of a pool. Counters are totals since the pool started."""

    state: str  # "starting", "running", "closing", "closed", "broken"
    workers: int  # worker processes in service or starting (not those being stopped)
    stopping: int  # failed, retiring or shrinking workers whose exit is pending
    starting: int
    ready: int  # idle and ready for a call
    busy: int  # workers running a call
    in_flight: int  # calls sent to workers and not yet answered
    queued: int  # callers waiting for a worker
    calls_ok: int
    calls_failed: int  # the command raised, or a bad call
    calls_timed_out: int
    calls_crashed: int  # the worker died (or broke the protocol) during the call
    calls_rejected: int  # saturated, queue timeout, closed, broken: never sent
    calls_cancelled: int  # the caller was cancelled while its call ran
    calls_redispatched: int  # sent to a worker that had already died, and run on another
    restarts: int  # workers started to replace one that died, timed out or was recycled
    recycled: int
    start_failures: int
    checkout_wait: Percentiles
    call_latency: Percentiles
    # Calls the in-service workers can take at once (one each, or their concurrency / the
    # pipeline depth); ``in_flight`` of them are busy.
    slots: int = 0
    # Calls taken back from behind a long call to run on a worker that came free (pipelining).
    calls_taken_back: int = 0
    sessions: int = 0  # open sessions (pool.session()): not closed, lost or expired
    sessions_by_worker: dict[str, int] = field(default_factory=dict)  # worker id -> open sessions
    # Workers in service or starting, by cluster node (backend="ray"; empty for a local pool).
    nodes: dict[str, int] = field(default_factory=dict)


class Counters:
    """Mutable counters; mutated under the pool's lock, snapshotted by ``stats()``."""

    __slots__ = (
        "_latency_buckets",
        "_latency_sum",
        "_unbucketed",
        "_wait_buckets",
        "_wait_sum",
        "call_latency",
        "calls_cancelled",
        "calls_crashed",
        "calls_failed",
        "calls_ok",
        "calls_redispatched",
        "calls_rejected",
        "calls_taken_back",
        "calls_timed_out",
        "checkout_wait",
        "recycled",
        "restarts",
        "restarts_by_cause",
        "start_failures",
    )

    def __init__(self, keep: int = 2048) -> None:
        self.calls_ok = 0
        self.calls_failed = 0
        self.calls_timed_out = 0
        self.calls_crashed = 0
        self.calls_rejected = 0
        self.calls_cancelled = 0
        self.calls_redispatched = 0
        self.calls_taken_back = 0
        self.restarts = 0
        self.recycled = 0
        self.start_failures = 0
        self.checkout_wait: deque[float] = deque(maxlen=keep)
        self.call_latency: deque[float] = deque(maxlen=keep)
        # For metrics: per-bucket counts (the last one is +Inf) and sums since the pool
        # started; the reservoirs above forget, a Prometheus histogram must not.
        self._latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._wait_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._wait_sum = 0.0
        # (wait, latency, wait, latency, ...) not yet in the histograms: bucketing is deferred
        # to whoever reads them (or every _FOLD_AT calls), off the per-call path.
        self._unbucketed: list[float] = []
        self.restarts_by_cause: dict[str, int] = {}  # Cause name (lower case) -> restarts

    def count_call(self, outcome: Outcome, wait: float, latency: float) -> None:
        """Count one finished call: its outcome, checkout wait and latency (seconds)."""
        if outcome == "ok":
            self.calls_ok += 1
        elif outcome == "failed":
            self.calls_failed += 1
        elif outcome == "timeout":
            self.calls_timed_out += 1
        elif outcome == "crashed":
            self.calls_crashed += 1
        elif outcome == "cancelled":
            self.calls_cancelled += 1
        else:
            assert_never(outcome)  # a new Outcome needs its counter
        self.checkout_wait.append(wait)
        self.call_latency.append(latency)
        pending = self._unbucketed
        pending += (wait, latency)
        if len(pending) >= _FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        pending = self._unbucketed
        lat, wait = self._latency_buckets, self._wait_buckets
        for i in range(0, len(pending), 2):
            wait[bisect_left(LATENCY_BUCKETS, pending[i])] += 1
            lat[bisect_left(LATENCY_BUCKETS, pending[i + 1])] += 1
        self._wait_sum += sum(pending[0::2])
        self._latency_sum += sum(pending[1::2])
        pending.clear()

    # The cumulative histograms metrics exporters read; read them under the pool's lock.
    @property
    def latency_buckets(self) -> list[int]:
        self._fold()
        return self._latency_buckets

    @property
    def latency_sum(self) -> float:
        self._fold()
        return self._latency_sum

    @property
    def wait_buckets(self) -> list[int]:
        self._fold()
        return self._wait_buckets

    @property
    def wait_sum(self) -> float:
        self._fold()
        return self._wait_sum
