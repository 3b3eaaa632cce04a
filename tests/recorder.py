"""Collects a pool's lifecycle events and lets a test wait for one (bounded), from any thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import snakeden


class Recorder:
    def __init__(self) -> None:
        self.events: list[snakeden.WorkerEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: snakeden.WorkerEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [e.kind for e in self.events]

    def count(self, kind: str) -> int:
        return self.kinds().count(kind)

    def wait_for(
        self, predicate: Callable[[list[snakeden.WorkerEvent]], bool], timeout: float = 60.0
    ) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"event never came; saw {[e.kind for e in self.events]}")

    def wait_count(self, kind: str, n: int = 1, timeout: float = 60.0) -> None:
        self.wait_for(lambda evs: sum(e.kind == kind for e in evs) >= n, timeout)

    async def wait_count_async(self, kind: str, n: int = 1, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.wait_count, kind, n, timeout)
