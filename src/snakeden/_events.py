"""Lifecycle events: worker started, ready, crashed, timed out, recycled, replaced, ...

A pool takes ``on_event=callback``; each event is an immutable :class:`WorkerEvent`. Callbacks run
on the pool's event loop and must be quick; an exception in one is logged, never propagated.
Later, metrics exporters subscribe here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from snakeden._handle import WorkerHandle

log = logging.getLogger("snakeden")

#: Event kinds, in rough lifecycle order.
EventKind = Literal[
    "started",  # the process exists (launched)
    "ready",  # it said HELLO; duration = launch to ready
    "start_failed",
    "crashed",  # died outside of a shutdown (detail: exit description)
    "timed_out",  # killed because a call exceeded its timeout
    "unhealthy",  # failed a health check (no pong, stopped)
    "aged",  # reached max_age; a replacement is started
    "over_memory",  # exceeded max_memory
    "recycled",  # retired after its replacement became ready (or its limit)
    "replaced",  # its replacement is ready (detail: the new worker's id)
    "shrunk",  # retired for being idle past idle_timeout
    "taken_back",  # calls waiting behind its running call were taken back (detail: how many)
    "backoff",  # (pool-wide) waiting ``duration`` seconds before restarting after failures
]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    kind: EventKind
    worker_id: str
    pid: int | None
    at: float  # the pool clock's reading
    duration: float | None  # seconds, where the event ends a phase (e.g. ready: start-up time)
    detail: str = ""


class EventHub:
    def __init__(self, callback: Callable[[WorkerEvent], None] | None, clock: Callable[[], float]):
        self.callback = callback
        self.clock = clock
        self.counts: dict[str, int] = {}  # events by kind since the pool started (metrics)

    def emit(self, kind: EventKind, w: WorkerHandle, t0: float | None, *, detail: str = "") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1  # on the loop only: no lock needed
        if self.callback is None:
            return
        duration = time.perf_counter() - t0 if t0 is not None else None
        event = WorkerEvent(kind, w.id, w.pid, self.clock(), duration, detail)
        self._deliver(event)

    def emit_plain(self, kind: EventKind, duration: float | None, detail: str) -> None:
        """An event about the pool rather than one worker (e.g. restart back-off)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.callback is not None:
            self._deliver(WorkerEvent(kind, "", None, self.clock(), duration, detail))

    def _deliver(self, event: WorkerEvent) -> None:
        assert self.callback is not None
        try:
            self.callback(event)
        except Exception:
            log.exception("on_event callback failed for %s", event)
