"""The worker side of trace-context propagation (docs/protocol.md section 6.2, CONTEXT).

A CALL with the CONTEXT flag carries the caller's span as W3C Trace Context headers. The worker
runs the command inside that context, under a SERVER span ``snakeden.worker <command>``, so
every span the command opens nests under the host's call span, across the process boundary.

Import cost, measured (docs/operations.md): ``opentelemetry.trace`` + ``.context`` + the W3C
propagator take 15-40 ms to import, which every worker of every pool would pay at start
whenever ``opentelemetry-api`` happens to be installed. So a worker only *looks* for the package
at start (``find_spec``, about 0.4 ms) to decide whether to advertise the feature, and imports it
at the first CALL that carries a context: once per process, never per call. When the worker's
own code already imported OpenTelemetry (it must, to open spans of its own), :func:`preload` at
start costs about a millisecond and the first traced call pays nothing extra.

Without OpenTelemetry in the worker nothing is advertised, and a context that arrives anyway is
ignored: the call runs as if it had none.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

# None: not tried yet; False: not importable (stop trying); else the loaded parts.
_otel: Any = None


_findable: bool | None = None  # asked once per process; a fork template asks for its workers


def available() -> bool:
    """Whether OpenTelemetry's API can be imported here, without importing it."""
    global _findable
    if _otel is not None:
        return _otel is not False
    if _findable is None:
        try:
            _findable = importlib.util.find_spec("opentelemetry.trace") is not None
        except (ImportError, ValueError):
            _findable = False
    return _findable


def preload() -> None:
    """Load now if the worker's code imported OpenTelemetry already (then it is cheap)."""
    if _otel is None and "opentelemetry.trace" in sys.modules:
        _load()


class _Parts:
    __slots__ = ("context", "error", "propagator", "server", "trace", "tracer")

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from snakeden import __version__

        self.context = context
        self.trace = trace
        # The W3C propagator itself, not the global one: the carrier's format is fixed by the
        # protocol (other runtimes read and write it), not by OTEL_PROPAGATORS.
        self.propagator = TraceContextTextMapPropagator()
        # A ProxyTracer until the worker's code sets a global TracerProvider (in setup() or at
        # its first call, say); it follows the provider from then on.
        self.tracer = trace.get_tracer("snakeden.worker", __version__)
        self.server = SpanKind.SERVER
        self.error = (Status, StatusCode.ERROR)


def _load() -> Any:
    global _otel
    try:
        _otel = _Parts()
    except Exception:  # not installed, or broken: run calls without their context
        _otel = False
    return _otel


def start(carrier: dict[Any, Any], command: str, worker_id: str) -> Any:
    """Enter the caller's context and open the worker's span; None if that is not possible.

    Never raises: a context the worker cannot use must not fail the call."""
    parts = _otel if _otel is not None else _load()
    if parts is False:
        return None
    try:
        # Only string headers: the propagator's getter would choke on anything else.
        headers = {k: v for k, v in carrier.items() if type(k) is str and type(v) is str}
        parent = parts.propagator.extract(headers)
        span = parts.tracer.start_span(
            f"snakeden.worker {command}",
            context=parent,
            kind=parts.server,
            attributes={
                "snakeden.command": command,
                "snakeden.worker.id": worker_id,
                "snakeden.worker.pid": os.getpid(),
            },
        )
        token = parts.context.attach(parts.trace.set_span_in_context(span, parent))
    except Exception:
        return None
    return span, token


def end(handle: Any, outcome: str, exc: BaseException | None = None) -> None:
    """Leave the context and end the span (before the reply is sent, so the span is exported
    by the time the caller has its answer, with a synchronous span processor)."""
    span, token = handle
    parts = _otel
    try:
        parts.context.detach(token)
        span.set_attribute("snakeden.outcome", outcome)
        if outcome != "ok":
            status, code = parts.error
            if exc is not None:
                span.record_exception(exc)
            span.set_status(status(code, outcome))
        span.end()
    except Exception:  # the caller's answer matters more than the span
        pass


def flush(timeout_ms: int = 2000) -> None:
    """Export what the worker's span processors still hold: a forked worker leaves with
    ``os._exit``, which skips the SDK's own flush at exit."""
    if not _otel:
        return
    try:
        force_flush = getattr(_otel.trace.get_tracer_provider(), "force_flush", None)
        if force_flush is not None:
            force_flush(timeout_ms)
    except Exception:
        pass
