"""OpenTelemetry spans, recorded with the SDK's in-memory exporter."""

from __future__ import annotations

import pytest

import snakeden
from snakeden import tracing
from snakeden._core import PoolCore
from tests.conftest import run

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

EX = "snakeden.examples"


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def test_spans_carry_outcome_worker_and_nest_under_the_callers_span() -> None:
    tp, exporter = provider()
    with snakeden.SyncPool(EX, size=1) as pool:
        tracing.instrument(pool, tracer_provider=tp)
        tracing.instrument(pool, tracer_provider=tp)  # twice: still one span per call
        parent_tracer = tp.get_tracer("test")
        with parent_tracer.start_as_current_span("request") as parent:
            assert pool.call("add", 1, 2) == 3
            with pytest.raises(snakeden.RemoteError):
                pool.call("fail", "no")
            pid = pool.worker_pids()[0]
            with pytest.raises(snakeden.WorkerCrashed):
                pool.call("crash", "os_exit")
            pool.wait_ready(1, timeout=60)
            with pytest.raises(snakeden.CallTimeout):
                pool.call("hang_in_c", timeout=0.3)
    spans = [s for s in exporter.get_finished_spans() if s.name != "request"]
    assert [s.attributes["snakeden.outcome"] for s in spans] == [
        "ok",
        "failed",
        "crashed",
        "timeout",
    ]
    assert [s.attributes["snakeden.command"] for s in spans] == [
        "add",
        "fail",
        "crash",
        "hang_in_c",
    ]
    assert spans[0].name == "snakeden add"
    assert spans[0].kind is SpanKind.CLIENT
    assert spans[0].status.status_code is StatusCode.UNSET
    assert all(s.status.status_code is StatusCode.ERROR for s in spans[1:])
    assert spans[0].attributes["snakeden.worker.pid"] == pid
    assert spans[2].attributes["snakeden.worker.pid"] == pid  # the worker that crashed
    assert spans[3].attributes["snakeden.worker.pid"] != pid  # its replacement
    assert spans[3].end_time - spans[3].start_time >= 0.3e9
    for s in spans:
        assert s.parent is not None and s.parent.span_id == parent.get_span_context().span_id
        assert s.attributes["snakeden.worker.id"].startswith("w")
        assert s.attributes["snakeden.checkout_wait_s"] >= 0


def test_asyncio_pool_instrumented_before_start() -> None:
    tp, exporter = provider()

    async def body() -> None:
        pool = snakeden.Pool(EX, size=2)
        tracing.instrument(pool, tracer_provider=tp)
        async with pool:
            with tp.get_tracer("test").start_as_current_span("batch") as parent:
                assert await pool.map("add", [(i, i) for i in range(5)], star=True) == [
                    2 * i for i in range(5)
                ]
        spans = [s for s in exporter.get_finished_spans() if s.name != "batch"]
        assert len(spans) == 5
        assert all(s.attributes["snakeden.outcome"] == "ok" for s in spans)
        assert all(s.parent.span_id == parent.get_span_context().span_id for s in spans)

    run(body())


def test_an_uninstrumented_pool_runs_no_tracing_code() -> None:
    # Tracing off is the class's own release step: no wrapper, no check on the call path.
    with snakeden.SyncPool(EX, size=1) as pool:
        assert pool.call("add", 1, 1) == 2
        assert "release" not in vars(pool._core)
        assert type(pool._core).release is PoolCore.release
