"""OpenTelemetry spans, recorded with the SDK's in-memory exporter."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

import snakeden
from snakeden import tracing
from snakeden._channel import Channel
from snakeden._core import PoolCore
from snakeden._protocol import Flag, Frame, Kind, decode_body, encode_body, encode_header
from snakeden._tracing import with_context
from tests.conftest import run
from tests.worker_harness import Worker

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from tests.workers.traced import SPANS_ENV

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
    # Tracing off is the class's own release step (no wrapper) and no CallTracer: the fronts
    # build the CALL frame as they always did.
    with snakeden.SyncPool(EX, size=1) as pool:
        assert pool.call("add", 1, 1) == 2
        assert "release" not in vars(pool._core)
        assert type(pool._core).release is PoolCore.release
        assert pool._core.tracing is None


# --- the trace context across the process boundary ----------------------------------------------

TRACED = "tests.workers.traced:Traced"


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class CallFlags:
    """The flags byte of every CALL frame the host writes, seen at the channel."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.flags: list[int] = []
        send, request = Channel.send, Channel.request_blocking

        def record(data: bytes) -> None:
            if data[4] == Kind.CALL:
                self.flags.append(data[5])

        def traced_send(ch: Channel, data: bytes, *a: Any, **k: Any) -> Any:
            record(data)
            return send(ch, data, *a, **k)

        def traced_request(ch: Channel, ident: int, data: bytes, *a: Any, **k: Any) -> Any:
            record(data)
            return request(ch, ident, data, *a, **k)

        monkeypatch.setattr(Channel, "send", traced_send)
        monkeypatch.setattr(Channel, "request_blocking", traced_request)

    @property
    def with_context(self) -> int:
        return sum(1 for f in self.flags if f & Flag.CONTEXT)


def check_nesting(
    host: list[ReadableSpan], worker: list[dict[str, Any]], command: str, outcome: str
) -> None:
    """The host's call span for ``command`` is the parent of the worker's span, whose child is
    the span the command opened; all in one trace."""
    (call,) = [s for s in host if s.name == f"snakeden {command}"]
    (run,) = [s for s in worker if s["name"] == f"snakeden.worker {command}"]
    assert call.context is not None
    assert run["trace_id"] == call.context.trace_id
    assert run["parent_span_id"] == call.context.span_id
    assert run["parent_remote"] is True
    assert run["kind"] == "SERVER"
    assert run["attributes"]["snakeden.outcome"] == outcome
    assert run["attributes"]["snakeden.worker.pid"] == call.attributes["snakeden.worker.pid"]
    assert run["attributes"]["snakeden.worker.id"] == call.attributes["snakeden.worker.id"]
    assert call.attributes["snakeden.outcome"] == outcome
    assert run["status"] == ("UNSET" if outcome == "ok" else "ERROR")
    inner = [s for s in worker if s["parent_span_id"] == run["span_id"]]
    assert [s["name"] for s in inner] == ["work"]
    assert inner[0]["trace_id"] == call.context.trace_id


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_spans_nest_under_the_call_span_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    tp, exporter = provider()
    frames = CallFlags(monkeypatch)
    with snakeden.SyncPool(
        TRACED, size=1, start_method=start_method, env={SPANS_ENV: str(spans_file)}
    ) as pool:
        tracing.instrument(pool, tracer_provider=tp)
        with tp.get_tracer("test").start_as_current_span("request") as request:
            assert pool.call("work", 1) == 1
            with pytest.raises(ValueError, match="no"):
                pool.call("fail", "no")
            valid, trace_hex, span_hex = pool.call("context")
    host = list(exporter.get_finished_spans())
    worker = read_spans(spans_file)
    check_nesting(host, worker, "work", "ok")
    check_nesting(host, worker, "fail", "failed")
    (fail,) = [s for s in worker if s["name"] == "snakeden.worker fail"]
    assert fail["status"] == "ERROR"
    # Inside the command, the current span is the worker's span, in the caller's trace.
    (ctx_call,) = [s for s in host if s.name == "snakeden context"]
    (ctx_run,) = [s for s in worker if s["name"] == "snakeden.worker context"]
    trace_id = int(trace_hex, 16)
    assert valid and trace_id == request.get_span_context().trace_id == ctx_call.context.trace_id
    assert int(span_hex, 16) == ctx_run["span_id"]
    assert frames.flags and frames.with_context == len(frames.flags) == 3


def test_worker_spans_nest_under_the_call_span_asyncio(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    tp, exporter = provider()

    async def body() -> None:
        pool = snakeden.Pool(TRACED, size=2, env={SPANS_ENV: str(spans_file)})
        tracing.instrument(pool, tracer_provider=tp)
        async with pool:
            with tp.get_tracer("test").start_as_current_span("request"):
                assert await pool.call("work", "a") == "a"
                with pytest.raises(ValueError, match="nope"):
                    await pool.call("fail", "nope")
                # BATCH: one context per frame, one worker span per chunk.
                assert await pool.map("work", range(6), chunksize=3) == list(range(6))

    run(body())
    host = list(exporter.get_finished_spans())
    worker = read_spans(spans_file)
    check_nesting(host, worker, "fail", "failed")
    calls = {s.context.span_id: s for s in host if s.name == "snakeden work"}
    runs = [s for s in worker if s["name"] == "snakeden.worker work"]
    assert len(calls) == len(runs) == 3  # one call, two chunks
    for r in runs:
        assert r["parent_span_id"] in calls
        assert r["trace_id"] == calls[r["parent_span_id"]].context.trace_id
    run_ids = {r["span_id"] for r in runs}
    inner = [s for s in worker if s["parent_span_id"] in run_ids]
    assert [s["name"] for s in inner] == ["work"] * (1 + 6)


def test_timeout_and_crash_end_the_call_span_with_their_outcome(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    tp, exporter = provider()
    with snakeden.SyncPool(TRACED, size=1, env={SPANS_ENV: str(spans_file)}) as pool:
        tracing.instrument(pool, tracer_provider=tp)
        with pytest.raises(snakeden.CallTimeout):
            pool.call("nap", 30, timeout=0.5)
        pool.wait_ready(1, timeout=60)
        with pytest.raises(snakeden.WorkerCrashed):
            pool.call(os._exit, 3)  # by reference: the worker dies mid-call
        pool.wait_ready(1, timeout=60)
        assert pool.call("work", 2) == 2
    host = {s.name: s for s in exporter.get_finished_spans()}
    assert host["snakeden nap"].attributes["snakeden.outcome"] == "timeout"
    assert host["snakeden nap"].status.status_code is StatusCode.ERROR
    assert host["snakeden nap"].end_time - host["snakeden nap"].start_time >= 0.5e9
    assert host["snakeden posix:_exit"].attributes["snakeden.outcome"] == "crashed"
    assert host["snakeden posix:_exit"].status.status_code is StatusCode.ERROR
    # The killed worker never ended its spans; the next worker's nest as usual.
    worker = read_spans(spans_file)
    assert not [s for s in worker if "nap" in s["name"]]
    check_nesting(list(host.values()), worker, "work", "ok")


def test_tracing_off_sends_no_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spans_file = tmp_path / "spans.jsonl"
    frames = CallFlags(monkeypatch)
    with snakeden.SyncPool(TRACED, size=1, env={SPANS_ENV: str(spans_file)}) as pool:
        assert pool._core.tracing is None
        assert pool.call("work", 1) == 1
        assert pool.call("context") == [False, "0", "0"]  # the command ran in no trace
    assert len(frames.flags) == 2 and frames.with_context == 0
    # The worker's own span is a root: no snakeden.worker span, no parent.
    assert [(s["name"], s["parent_span_id"]) for s in read_spans(spans_file)] == [("work", None)]


def test_a_worker_without_the_feature_never_gets_a_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    tp, exporter = provider()
    frames = CallFlags(monkeypatch)
    with snakeden.SyncPool(
        "tests.workers.traced_old:Traced", size=1, env={SPANS_ENV: str(spans_file)}
    ) as pool:
        tracing.instrument(pool, tracer_provider=tp)
        with tp.get_tracer("test").start_as_current_span("request"):
            assert pool.call("work", 1) == 1
            assert pool.call("context") == [False, "0", "0"]
    assert len(frames.flags) == 2 and frames.with_context == 0
    # The host's spans are there all the same.
    assert [s.name for s in exporter.get_finished_spans()] == [
        "snakeden work",
        "snakeden context",
        "request",
    ]


@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
def test_the_context_is_the_bodys_fourth_element(serializer: str) -> None:
    carrier = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE," + "x" * 300,  # over 255 bytes: the long string opcode
    }
    flags = Flag.PICKLE if serializer == "pickle" else 0
    call = ["add", [1, (2, 3)], {"k": "é"}]
    body = encode_body(call, flags)
    traced = with_context(body, flags, carrier)
    assert traced is not None
    frame = Frame(Kind.CALL, flags | Flag.CONTEXT, 1, traced)
    assert decode_body(frame) == [*call, carrier]
    if serializer == "pickle":
        assert pickle._loads(traced) == [*call, carrier]  # type: ignore[attr-defined]
    assert with_context(b"\x92\x00\x00", 0, carrier) is None  # not [command, args, kwargs]


def test_the_worker_reads_the_context_and_tolerates_a_bad_one() -> None:
    w = Worker(
        "tests.workers.traced_old:Traced", max_frame_size=1 << 20, env={SPANS_ENV: "/dev/null"}
    )
    try:
        assert "trace" not in w.hello["features"]  # patched away: an "old" worker
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

        def call(ident: int, body: list[Any], flags: int = Flag.CONTEXT) -> Any:
            data = encode_body(body)
            assert w.send([encode_header(Kind.CALL, ident, len(data), flags) + data])
            frame = w.reply()
            assert frame.id == ident
            return frame.kind, decode_body(frame)

        # Without the feature advertised the runtime still reads CONTEXT (and the context).
        kind, (valid, trace_hex, span_hex) = call(1, ["context", [], {}, {"traceparent": parent}])
        # The command runs in the worker's span, a child in the caller's trace.
        assert (kind, valid, trace_hex) == (Kind.RESULT, True, "af7651916cd43dd8448eb211c80319c")
        assert span_hex != "b7ad6b7169203331"
        # A context that is not W3C, or not strings, does not fail the call: the worker's span
        # starts a trace of its own, as W3C says for an invalid traceparent.
        bad = {"traceparent": "junk", 7: 8, "x": [1]}
        kind, (valid, trace_hex, _) = call(2, ["context", [], {}, bad])
        assert (kind, valid) == (Kind.RESULT, True)
        assert trace_hex != "af7651916cd43dd8448eb211c80319c"
        assert call(3, ["work", [5], {}], Flag.CONTEXT) == (Kind.RESULT, 5)  # no 4th: none
        kind, err = call(4, ["work", [5], {}, "not a map"])
        assert (kind, err["kind"]) == (Kind.ERROR, "decode")
        assert "context of a CALL must be a map" in err["message"]
        kind, err = call(5, ["work", [5], {}, {}], 0)  # a 4th element without the flag
        assert (kind, err["kind"]) == (Kind.ERROR, "decode")
    finally:
        w.close()


def test_the_python_worker_advertises_the_feature() -> None:
    w = Worker("snakeden.examples", max_frame_size=1 << 20)
    try:
        assert w.hello["features"] == ["trace", "session"]
    finally:
        w.close()
