"""OpenTelemetry spans for pool calls: ``snakeden.tracing.instrument(pool)``.

Each call that ran (or failed, timed out, crashed, was cancelled) becomes one CLIENT span named
``snakeden <command>``, child of whatever span is current where the call was made, with the
worker's id and pid, the outcome, and the checkout wait.

Cost: an uninstrumented pool runs no tracing code at all, not even a check. ``instrument()``
puts a wrapper around the pool's release step, the one place every call ends with everything a
span needs (worker, outcome, wait, latency); the span is recorded there after the fact, with
its start time set back by the wait and the latency. Calls made by a ``SyncPool``'s ``submit``
or ``map`` run on its dispatcher threads, where the submitter's context is not current: those
spans are roots (``call()`` runs on the caller's thread and nests).

Worker-side spans nesting under these need the trace context in the CALL frame: a protocol
change proposed in docs/operations.md, not done here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

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
    if "release" in vars(core):
        return  # already instrumented
    from opentelemetry.trace import SpanKind, Status, StatusCode

    release = core.release

    def traced_release(
        w: WorkerHandle, outcome: Outcome | None, wait: float = 0.0, latency: float = 0.0
    ) -> None:
        if outcome is not None:  # None: a ping, or a call that never ran (re-dispatched)
            end = time.time_ns()
            span = tracer.start_span(
                f"snakeden {w.current_command}",
                kind=SpanKind.CLIENT,
                start_time=end - int((wait + latency) * 1e9),
                attributes={
                    "snakeden.command": w.current_command,
                    "snakeden.pool": target,
                    "snakeden.worker.id": w.id,
                    "snakeden.worker.pid": w.pid or 0,
                    "snakeden.outcome": outcome,
                    "snakeden.checkout_wait_s": wait,
                    "snakeden.latency_s": latency,
                },
            )
            if outcome != "ok":
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end(end_time=end)
        release(w, outcome, wait, latency)

    core.release = traced_release  # type: ignore[method-assign]
