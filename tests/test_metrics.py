"""Prometheus metrics, scraped over real HTTP and parsed as Prometheus would."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import snakeden
from snakeden import metrics
from tests.conftest import run

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

EX = "snakeden.examples"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def registry() -> Iterator[tuple[Any, int]]:
    reg = prometheus_client.CollectorRegistry()
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=reg)
    yield reg, server.server_port
    server.shutdown()
    server.server_close()
    thread.join(10)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_scrape_counts_ok_failed_crashed_and_timed_out_calls(registry: tuple[Any, int]) -> None:
    reg, port = registry
    n = 25
    with snakeden.SyncPool(EX, size=2) as pool:
        assert metrics.register(pool, reg, name="jobs") == "jobs"
        for i in range(n):
            assert pool.call("add", i, 1) == i + 1
        with pytest.raises(snakeden.RemoteError):
            pool.call("fail", "no")
        with pytest.raises(snakeden.WorkerCrashed):
            pool.call("crash", "os_exit")
        with pytest.raises(snakeden.CallTimeout):
            pool.call("hang_in_c", timeout=0.3)
        # The timed-out worker's exit (and so its restart) is counted before its
        # replacement starts: once both workers are ready again, every count is in.
        pool.wait_ready(2, timeout=60)
        s = scrape(port)
        pids = pool.worker_pids()

    p = {"pool": "jobs"}
    assert value(s, "snakeden_calls_total", outcome="ok", **p) == n
    assert value(s, "snakeden_calls_total", outcome="failed", **p) == 1
    assert value(s, "snakeden_calls_total", outcome="crashed", **p) == 1
    assert value(s, "snakeden_calls_total", outcome="timeout", **p) == 1
    assert value(s, "snakeden_calls_total", outcome="rejected", **p) == 0
    assert value(s, "snakeden_call_duration_seconds_count", **p) == n + 3
    assert value(s, "snakeden_call_duration_seconds_bucket", le="+Inf", **p) == n + 3
    assert value(s, "snakeden_checkout_wait_seconds_count", **p) == n + 3
    assert value(s, "snakeden_call_duration_seconds_sum", **p) >= 0.3  # the timed-out call
    # A crash seen by the caller first is "crashed", by the exit watcher first "exited".
    crash_restarts = sum(
        v
        for (name, labels), v in s.items()
        if name == "snakeden_restarts_total" and dict(labels).get("cause") in ("crashed", "exited")
    )
    assert crash_restarts == 1
    assert value(s, "snakeden_restarts_total", cause="timeout", **p) == 1
    assert value(s, "snakeden_worker_events_total", kind="crashed", **p) == 1
    assert value(s, "snakeden_worker_events_total", kind="timed_out", **p) == 1
    assert value(s, "snakeden_worker_events_total", kind="ready", **p) == 4
    assert value(s, "snakeden_workers", state="idle", **p) == 2
    assert value(s, "snakeden_workers", state="busy", **p) == 0
    assert value(s, "snakeden_queue_depth", **p) == 0
    assert value(s, "snakeden_busy_slots", **p) == 0
    assert value(s, "snakeden_pool_up", **p) == 1
    assert value(s, "snakeden_busy_seconds_total", **p) >= 0.3
    assert 0 <= value(s, "snakeden_utilization_ratio", **p) <= 1
    workers = {
        dict(labels)["worker"]
        for (name, labels) in s
        if name.startswith("snakeden_worker_") and "worker" in dict(labels)
    }
    assert len(workers) == 2
    rss = [v for (name, _), v in s.items() if name == "snakeden_worker_memory_rss_bytes"]
    assert len(rss) == 2 and all(v > 1_000_000 for v in rss)
    assert len(pids) == 2


def test_two_asyncio_pools_told_apart_by_label_and_uss(registry: tuple[Any, int]) -> None:
    reg, port = registry

    async def body() -> Samples:
        async with (
            snakeden.Pool(EX, size=1) as a,
            snakeden.Pool(EX, size=1) as b,
        ):
            assert metrics.register(a, reg, memory="uss") == EX
            assert metrics.register(b, reg, per_worker=False) == f"{EX}-2"
            assert metrics.register(a, reg) == EX  # twice: the same label, no duplicates
            await a.map("add", [(i, 1) for i in range(10)], star=True, chunksize=1)  # 10 calls
            await b.call("add", 1, 2)
            s = await asyncio.to_thread(scrape, port)
            metrics.unregister(b, reg)
            after = await asyncio.to_thread(scrape, port)
            assert not any(dict(k[1]).get("pool") == f"{EX}-2" for k in after)
            return s

    s = run(body())
    assert value(s, "snakeden_calls_total", outcome="ok", pool=EX) == 10
    assert value(s, "snakeden_calls_total", outcome="ok", pool=f"{EX}-2") == 1
    uss = [v for (name, _), v in s.items() if name == "snakeden_worker_memory_uss_bytes"]
    assert len(uss) == 1 and uss[0] > 0  # only pool a has per-worker series
