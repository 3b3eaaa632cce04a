"""A worker that traces its own commands with the OpenTelemetry SDK (tests/test_tracing.py).

``setup()`` installs a global SDK TracerProvider whose exporter appends each finished span as a
JSON line to the file named by ``SNAKEDEN_TEST_SPANS`` (synchronously: the span is on disk
before the call is answered).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import snakeden

SPANS_ENV = "SNAKEDEN_TEST_SPANS"


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as f:
            for s in spans:
                assert s.context is not None
                record = {
                    "name": s.name,
                    "kind": s.kind.name,
                    "trace_id": s.context.trace_id,
                    "span_id": s.context.span_id,
                    "parent_span_id": s.parent.span_id if s.parent is not None else None,
                    "parent_remote": s.parent.is_remote if s.parent is not None else None,
                    "attributes": dict(s.attributes or {}),
                    "status": s.status.status_code.name,
                    "pid": os.getpid(),
                }
                f.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS


class Traced:
    def setup(self) -> None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ[SPANS_ENV])))
        trace.set_tracer_provider(provider)
        self.tracer = trace.get_tracer("tests.workers.traced")

    @snakeden.command
    def work(self, x: Any) -> Any:
        with self.tracer.start_as_current_span("work") as span:
            span.set_attribute("x", str(x))
            return x

    @snakeden.command
    def fail(self, message: str) -> None:
        with self.tracer.start_as_current_span("work"):
            raise ValueError(message)

    @snakeden.command
    def context(self) -> list[Any]:
        """The trace context current while the command runs: [valid, trace id, span id], the
        ids as ints in hex (a trace id does not fit in MessagePack's 64-bit integers)."""
        sc = trace.get_current_span().get_span_context()
        return [sc.is_valid, f"{sc.trace_id:x}", f"{sc.span_id:x}"]

    @snakeden.command
    def nap(self, seconds: float) -> None:
        with self.tracer.start_as_current_span("nap"):
            time.sleep(seconds)  # the workload inside the span, not a synchronisation
