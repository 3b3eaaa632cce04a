"""Progress for long ``map`` runs: ``pool.map(..., progress=True)`` or ``progress=callback``.

``True`` draws a bar with rate and ETA on stderr with ``rich`` (``pip install
'snakeden[rich]'``; a plain one-line counter without it), and stays quiet when stderr is not a
terminal (a log file gets no bar). A callable gets ``(done, total)`` after each finished item
(or chunk), from whichever thread finished it. Failed items count as done: the bar measures
work finished, not work that succeeded.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

Progress = bool | Callable[[int, int], object] | None


class Tracker:
    """Counts finished items; thread-safe; does nothing after :meth:`close`."""

    def __init__(self, total: int | None, sink: Callable[[int, int | None], object]) -> None:
        self.total = total
        self.done = 0
        self._sink = sink
        self._lock = threading.Lock()
        self._closed = False
        self._on_close: Callable[[], object] | None = None

    def advance(self, n: int) -> None:
        with self._lock:
            if self._closed:
                return
            self.done += n
            done = self.done
            self._sink(done, self.total)
        if self.total is not None and done >= self.total:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def track(
        self, coros: Sequence[Awaitable[T]], sizes: Sequence[int]
    ) -> list[Coroutine[Any, Any, T]]:
        """The coroutines, each advancing the count by its size when it ends."""
        return [self._counted(c, n) for c, n in zip(coros, sizes, strict=True)]

    async def _counted(self, coro: Awaitable[T], n: int) -> T:
        try:
            return await coro
        finally:
            self.advance(n)

    def watch(self, futures: Sequence[Future[Any]], sizes: Sequence[int]) -> None:
        """Advance as each future ends (not when it is cancelled: then :meth:`close` ends it)."""

        def advancer(n: int) -> Callable[[Future[Any]], None]:
            def done(f: Future[Any]) -> None:
                if not f.cancelled():
                    self.advance(n)

            return done

        for f, n in zip(futures, sizes, strict=True):
            f.add_done_callback(advancer(n))


def start(progress: Progress, total: int | None, description: str = "") -> Tracker | None:
    """A tracker for ``progress``, or None when there is nothing to show. ``total`` None: not
    known in advance (a stream); a bar then shows the count and rate, without an ETA."""
    if not progress:
        return None
    if callable(progress):
        return Tracker(total, progress)  # type: ignore[arg-type]  # map always knows its total
    if not _is_terminal():
        return None  # quiet in logs and pipes
    try:
        return _rich_tracker(total, description)
    except ImportError:
        return _plain_tracker(total, description)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _rich_tracker(total: int | None, description: str) -> Tracker:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")

    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = bar.add_task(description or "snakeden map", total=total)
    bar.start()
    tracker = Tracker(total, lambda done, _total: bar.update(task, completed=done))
    tracker._on_close = bar.stop
    return tracker


def _plain_tracker(total: int | None, description: str) -> Tracker:
    t0 = time.monotonic()
    label = description or "snakeden map"
    last = [0.0]

    def show(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and (total is None or done < total):
            return  # a terminal line ten times a second is plenty
        last[0] = now
        rate = done / max(now - t0, 1e-9)
        if total is None:
            sys.stderr.write(f"\r{label}: {done} {rate:,.1f}/s ")
        else:
            eta = (total - done) / rate if rate else 0.0
            sys.stderr.write(f"\r{label}: {done}/{total} {rate:,.1f}/s ETA {eta:,.0f}s ")
        sys.stderr.flush()

    tracker = Tracker(total, show)
    tracker._on_close = lambda: sys.stderr.write("\n")
    return tracker
