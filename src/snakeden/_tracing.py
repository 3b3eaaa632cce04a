"""OpenTelemetry spans for pool calls: ``snakeden.tracing.instrument(pool)``.

Each call that ran (or failed, timed out, crashed, was cancelled) becomes one CLIENT span named
``snakeden <command>``, child of whatever span is current where the call was made, with the
worker's id and pid, the outcome, and the checkout wait.

How: ``instrument()`` sets ``core.tracing``, which both fronts test once per call where they
build the CALL frame (an uninstrumented pool pays that one attribute test and nothing else: no
span, no bytes). With it set, :meth:`CallTracer.call_frame` opens the span as the frame is
built, right after checkout, with its start time set back by the checkout wait, and, for a
worker whose HELLO lists the ``trace`` feature, puts the span's W3C Trace Context into the frame
(the CONTEXT flag, docs/protocol.md section 6.2): spans the command opens in the worker nest
under it. The span is ended in the pool's release step (wrapped by ``instrument()``), the one
place every call ends with everything a span needs (worker, outcome, wait, latency).

Release finds the span through a ContextVar: release runs in the caller's context (its thread,
its task, or a done-callback that copied the task's context), the call's own frame counts no
other calls, and a call re-sent to another worker (it provably never reached the first one)
keeps its one span. Calls made by a ``SyncPool``'s ``submit`` or ``map`` run on its dispatcher
threads, where the submitter's context is not current: those spans are roots (``call()`` runs on
the caller's thread and nests).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from snakeden._handle import Cause
from snakeden._protocol import CONTEXT, PICKLE, Kind, encode_body, encode_header

if TYPE_CHECKING:
    from snakeden._core import PoolCore
    from snakeden._handle import WorkerHandle
    from snakeden._pool import Pool
    from snakeden._stats import Outcome
    from snakeden._syncpool import SyncPool


def instrument(pool: Pool | SyncPool, *, tracer_provider: Any = None) -> None:
    """Record a span for each call of ``pool`` with ``tracer_provider`` (default: the global
    one). An asyncio ``Pool`` may be instrumented before ``start()``; instrumenting twice is a
    no-op."""
    try:
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "snakeden.tracing needs opentelemetry-api: pip install 'snakeden[otel]'"
        ) from exc
    from snakeden import __version__

    tracer = trace.get_tracer("snakeden", __version__, tracer_provider=tracer_provider)
    target = pool.config.target or "by-reference"
    core: PoolCore | None = getattr(pool, "_core", None)
    if core is not None:
        _install(core, tracer, target)
        return
    from snakeden._pool import Pool

    if not isinstance(pool, Pool) or getattr(pool, "_snakeden_traced", False):
        return
    start = pool.start  # an asyncio Pool whose core does not exist yet

    async def start_traced() -> Any:
        started = await start()
        assert pool._core is not None
        _install(pool._core, tracer, target)
        return started

    pool._snakeden_traced = True  # type: ignore[attr-defined]
    pool.start = start_traced  # type: ignore[method-assign]


def _install(core: PoolCore, tracer: Any, target: str) -> None:
    if core.tracing is not None or "release" in vars(core):
        return  # already instrumented
    tracing = CallTracer(tracer, target)
    release = core.release

    def traced_release(
        w: WorkerHandle, outcome: Outcome | None, wait: float = 0.0, latency: float = 0.0
    ) -> None:
        if outcome is not None:
            tracing.finish(w, outcome, wait, latency)
        elif w.cause is Cause.INTERRUPTED:  # the caller's thread was interrupted mid-call
            tracing.finish(w, "interrupted", wait, latency)
        # else a ping, a lease handed back unused, or a call re-sent to another worker (it
        # keeps its span for the next attempt)
        release(w, outcome, wait, latency)

    core.release = traced_release  # type: ignore[method-assign]
    core.tracing = tracing


#: The span of the call running in this context, from its CALL frame to its release.
_CALL_SPAN: ContextVar[Any] = ContextVar("snakeden_call_span", default=None)


class CallTracer:
    """Opens a call's span with its CALL frame, carries its context, ends it at release.

    The carrier is always W3C Trace Context, whatever ``OTEL_PROPAGATORS`` says: the protocol
    fixes its format, so that workers in any language can read it."""

    def __init__(self, tracer: Any, target: str) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.tracer = tracer
        self.target = target
        self.client = SpanKind.CLIENT
        self.error = (Status, StatusCode.ERROR)

    def call_frame(  # noqa: PLR0917 - positional: it is on every traced call's path
        self,
        w: WorkerHandle,
        name: str,
        ident: int,
        flags: int,
        body: bytes,
        waited: float,
        attempt: int,
    ) -> bytes:
        """The CALL frame to send to ``w``; opens the call's span (its first attempt)."""
        span = _CALL_SPAN.get() if attempt else None
        if span is None:
            span = self.tracer.start_span(
                f"snakeden {name}",
                kind=self.client,
                start_time=time.time_ns() - int(waited * 1e9),
                attributes={"snakeden.command": name, "snakeden.pool": self.target},
            )
            _CALL_SPAN.set(span)
        if w.takes_context:
            sc = span.get_span_context()
            if sc.is_valid:  # a span of no SDK (the API's no-op) has nothing to carry
                # W3C traceparent, version 00, written here: the propagator's inject() says
                # the same in twice the time (a Context to build, a span to look up in it).
                carrier = {
                    "traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
                }
                if sc.trace_state:
                    carrier["tracestate"] = sc.trace_state.to_header()
                traced = with_context(body, flags, carrier)
                if traced is not None:
                    return encode_header(Kind.CALL, ident, len(traced), flags | CONTEXT) + traced
        return encode_header(Kind.CALL, ident, len(body), flags) + body

    def finish(self, w: WorkerHandle, outcome: str, wait: float, latency: float) -> None:
        span = _CALL_SPAN.get()
        if span is not None and span.is_recording():
            _CALL_SPAN.set(None)  # the context must not keep the span (and its call) alive
            end = None
        else:
            # Instrumented while this call was under way: recorded after the fact.
            end = time.time_ns()
            span = self.tracer.start_span(
                f"snakeden {w.current_command}",
                kind=self.client,
                start_time=end - int((wait + latency) * 1e9),
                attributes={"snakeden.command": w.current_command, "snakeden.pool": self.target},
            )
        span.set_attributes(
            {
                "snakeden.worker.id": w.id,
                "snakeden.worker.pid": w.pid or 0,
                "snakeden.outcome": outcome,
                "snakeden.checkout_wait_s": wait,
                "snakeden.latency_s": latency,
            }
        )
        if outcome != "ok":
            status, code = self.error
            span.set_status(status(code, outcome))
        span.end(end_time=end)


def with_context(body: bytes, flags: int, carrier: dict[str, str]) -> bytes | None:
    """The CALL body ``[command, args, kwargs]`` with ``carrier`` as a 4th element, made from
    the encoded body without encoding the arguments again; None if the body is not the
    3-element array it should be (then the call goes without its context)."""
    if flags & PICKLE:
        # A pickled list ends with STOP: push the dict, APPEND it to the list, STOP again.
        if body[-1:] != b".":
            return None
        return b"".join((body[:-1], _pickled_strings(carrier), b"a."))
    # MessagePack: the array header 0x93 (fixarray of 3) becomes 0x94, the map goes at the end.
    if body[:1] != b"\x93":
        return None
    return b"".join((b"\x94", memoryview(body)[1:], encode_body(carrier)))


def _pickled_strings(mapping: dict[str, str]) -> bytes:
    """Pickle opcodes that push a dict of str to str (no memo, no frame: safe to splice)."""
    out = [b"}"]  # EMPTY_DICT
    for key, value in mapping.items():
        for text in (key, value):
            data = text.encode("utf-8", "surrogatepass")
            if len(data) < 256:
                out.append(b"\x8c" + bytes((len(data),)) + data)  # SHORT_BINUNICODE
            else:
                out.append(b"X" + len(data).to_bytes(4, "little") + data)  # BINUNICODE
        out.append(b"s")  # SETITEM
    return b"".join(out)
