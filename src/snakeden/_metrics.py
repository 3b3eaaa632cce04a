"""Prometheus metrics for pools: ``snakeden.metrics.register(pool)``.

A custom collector reads each registered pool when Prometheus scrapes, never on a call's path:
the pool keeps plain counters (and fixed-bucket histograms) in its release step anyway, and a
scrape copies them under the checkout's lock once. ``prometheus-client`` is imported only here,
when ``register`` is called (``pip install snakeden[prometheus]``).

Several pools in one process share one collector per registry (a registry refuses two
collectors exposing the same metric names) and are told apart by the ``pool`` label.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from snakeden import _observe
from snakeden._events import EVENT_KINDS

if TYPE_CHECKING:
    from snakeden._core import PoolCore
    from snakeden._pool import Pool
    from snakeden._syncpool import SyncPool

Memory = Literal["rss", "uss"] | None

_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[Any, PoolCollector] = weakref.WeakKeyDictionary()


def register(
    pool: Pool | SyncPool,
    registry: Any = None,
    *,
    name: str | None = None,
    per_worker: bool = True,
    memory: Memory = "rss",
    uss_interval: float = 30.0,
) -> str:
    """Expose ``pool`` on ``registry`` (default: ``prometheus_client.REGISTRY``) as
    ``snakeden_*`` metrics labelled ``pool=name`` (default: the worker target, made unique).

    ``per_worker``: also per-worker series (label ``worker``: busy seconds, utilisation, calls,
    memory). ``memory``: ``"rss"`` reads each worker's RSS at scrape time (one ``/proc`` read
    per worker), ``"uss"`` also its USS (reads smaps: refreshed at most every ``uss_interval``
    seconds per worker), ``None`` neither. Returns the ``pool`` label used. The pool is held
    weakly: a pool that is garbage disappears from the metrics; :func:`unregister` removes one.
    """
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "snakeden.metrics needs prometheus-client: pip install 'snakeden[prometheus]'"
        ) from exc
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = PoolCollector()
            registry.register(collector)
            _collectors[registry] = collector
        return collector.add(
            pool,
            name or pool.config.target or "by-reference",
            per_worker=per_worker,
            memory=memory,
            uss_interval=uss_interval,
        )


def unregister(pool: Pool | SyncPool, registry: Any = None) -> None:
    """Stop exposing ``pool`` (its series vanish from the next scrape)."""
    if registry is None:
        import prometheus_client

        registry = prometheus_client.REGISTRY
    with _lock:
        collector = _collectors.get(registry)
        if collector is not None:
            collector.remove(pool)


class _Entry:
    __slots__ = ("memory", "name", "per_worker", "pool", "uss_cache", "uss_interval")

    def __init__(
        self, pool: Pool | SyncPool, name: str, per_worker: bool, memory: Memory, interval: float
    ) -> None:
        self.pool = weakref.ref(pool)
        self.name = name
        self.per_worker = per_worker
        self.memory = memory
        self.uss_interval = interval
        self.uss_cache: dict[int, tuple[float, int | None]] = {}  # pid -> (read at, uss)


class PoolCollector:
    """The ``prometheus_client`` collector for every pool registered on one registry."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()

    def add(
        self,
        pool: Pool | SyncPool,
        name: str,
        *,
        per_worker: bool,
        memory: Memory,
        uss_interval: float,
    ) -> str:
        with self._lock:
            self._entries = [e for e in self._entries if e.pool() is not None]
            for e in self._entries:
                if e.pool() is pool:
                    return e.name
            taken = {e.name for e in self._entries}
            label, n = name, 1
            while label in taken:  # two pools of one target: "mod", "mod-2", ...
                n += 1
                label = f"{name}-{n}"
            self._entries.append(_Entry(pool, label, per_worker, memory, uss_interval))
            return label

    def remove(self, pool: Pool | SyncPool) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e.pool() not in (pool, None)]

    def describe(self) -> list[Any]:
        # Nothing to check at register time: this collector's names are its own, one per
        # registry (registering it does not then call collect()).
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        P = ["pool"]
        PW = ["pool", "worker"]
        workers = GaugeMetricFamily(
            "snakeden_workers", "Worker processes by state.", labels=[*P, "state"]
        )
        size = GaugeMetricFamily("snakeden_pool_size", "Workers the pool keeps ready.", labels=P)
        up = GaugeMetricFamily(
            "snakeden_pool_up", "1 while the pool is starting or running, else 0.", labels=P
        )
        busy = GaugeMetricFamily(
            "snakeden_busy_slots", "Calls sent to workers and not yet answered.", labels=P
        )
        queue = GaugeMetricFamily(
            "snakeden_queue_depth", "Callers waiting for a free worker.", labels=P
        )
        util = GaugeMetricFamily(
            "snakeden_utilization_ratio",
            "Busy time over wall time of the live workers since each became ready.",
            labels=P,
        )
        calls = CounterMetricFamily("snakeden_calls", "Calls by outcome.", labels=[*P, "outcome"])
        redispatched = CounterMetricFamily(
            "snakeden_calls_redispatched",
            "Calls sent to a worker that had already died, and run on another.",
            labels=P,
        )
        busy_s = CounterMetricFamily(
            "snakeden_busy_seconds", "Seconds workers spent running calls.", labels=P
        )
        latency = HistogramMetricFamily(
            "snakeden_call_duration_seconds",
            "Call latency, from writing the call to its answer (or failure).",
            labels=P,
        )
        wait = HistogramMetricFamily(
            "snakeden_checkout_wait_seconds", "Time a call waited for a free worker.", labels=P
        )
        restarts = CounterMetricFamily(
            "snakeden_restarts",
            "Workers replaced after an unplanned exit, by cause.",
            labels=[*P, "cause"],
        )
        recycled = CounterMetricFamily(
            "snakeden_recycled", "Workers retired by max_calls/max_age/max_memory.", labels=P
        )
        start_failures = CounterMetricFamily(
            "snakeden_start_failures", "Worker launches that failed.", labels=P
        )
        events = CounterMetricFamily(
            "snakeden_worker_events", "Lifecycle events by kind.", labels=[*P, "kind"]
        )
        w_busy = CounterMetricFamily(
            "snakeden_worker_busy_seconds", "Seconds this worker spent running calls.", labels=PW
        )
        w_calls = CounterMetricFamily("snakeden_worker_calls", "Calls this worker ran.", labels=PW)
        w_util = GaugeMetricFamily(
            "snakeden_worker_utilization_ratio",
            "This worker's busy time over its wall time since it became ready.",
            labels=PW,
        )
        w_rss = GaugeMetricFamily(
            "snakeden_worker_memory_rss_bytes", "Resident set size of the worker.", labels=PW
        )
        w_uss = GaugeMetricFamily(
            "snakeden_worker_memory_uss_bytes",
            "Unique set size of the worker (what max_memory checks).",
            labels=PW,
        )
        with self._lock:
            entries = list(self._entries)
        for e in entries:
            pool = e.pool()
            core: PoolCore | None = getattr(pool, "_core", None) if pool is not None else None
            if core is None:
                continue  # dropped, or an asyncio Pool not started yet
            view = _observe.read(core, memory=e.memory is not None)
            if e.memory == "uss":
                self._fill_uss(e, view)
            p = [e.name]
            for state, n in view.workers_by_state().items():
                workers.add_metric([*p, state], n)
            size.add_metric(p, view.size)
            up.add_metric(p, 1.0 if view.state in ("starting", "running") else 0.0)
            busy.add_metric(p, view.in_flight)
            queue.add_metric(p, view.queued)
            live = [w for w in view.workers if w.state in ("idle", "busy")]
            wall = sum(w.age for w in live)
            util.add_metric(p, min(1.0, sum(w.busy_time for w in live) / wall) if wall else 0.0)
            for outcome in ("ok", "failed", "timeout", "crashed", "cancelled", "rejected"):
                calls.add_metric([*p, outcome], view.calls[outcome])
            redispatched.add_metric(p, view.calls["redispatched"])
            busy_s.add_metric(p, view.busy_time)
            latency.add_metric(p, _observe.cumulative(view.latency_buckets), view.latency_sum)
            wait.add_metric(p, _observe.cumulative(view.wait_buckets), view.wait_sum)
            for cause, n in sorted(view.restarts_by_cause.items()):
                restarts.add_metric([*p, cause], n)
            recycled.add_metric(p, view.recycled)
            start_failures.add_metric(p, view.start_failures)
            for kind in EVENT_KINDS:  # every kind, zeros too: rate() needs the series early
                events.add_metric([*p, kind], view.events.get(kind, 0))
            if e.per_worker:
                for w in live:
                    pw = [*p, w.id]
                    w_busy.add_metric(pw, w.busy_time)
                    w_calls.add_metric(pw, w.calls)
                    w_util.add_metric(pw, w.utilization)
                    if w.rss is not None:
                        w_rss.add_metric(pw, w.rss)
                    if w.uss is not None:
                        w_uss.add_metric(pw, w.uss)
        yield from (workers, size, up, busy, queue, util, calls, redispatched, busy_s, latency)
        yield from (wait, restarts, recycled, start_failures, events)
        yield from (w_busy, w_calls, w_util, w_rss, w_uss)

    @staticmethod
    def _fill_uss(e: _Entry, view: _observe.PoolView) -> None:
        """USS costs a smaps read per worker: at most once per ``uss_interval`` each."""
        now = time.monotonic()
        seen = set()
        for w in view.workers:
            if w.pid is None or w.state not in ("idle", "busy") or w.node is not None:
                continue
            seen.add(w.pid)
            cached = e.uss_cache.get(w.pid)
            if cached is None or now - cached[0] >= e.uss_interval:
                cached = (now, _observe._memory(w.pid, True)[1])
                e.uss_cache[w.pid] = cached
            w.uss = cached[1]
        for pid in set(e.uss_cache) - seen:
            del e.uss_cache[pid]
