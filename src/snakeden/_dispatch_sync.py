"""``SyncPool.submit()``'s queue and dispatcher threads: a dispatcher picks the next call and
runs it, on a lane of its own when it may pipeline (``_submit_sync``), else as ``call()``;
lanes take more queued calls behind it, and give back those a worker never began."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snakeden import _mapping_sync, _submit_sync
from snakeden._submit_sync import Item

if TYPE_CHECKING:
    from snakeden._config import PoolConfig
    from snakeden._core import PoolCore


class DispatchQueue:
    """The dispatcher threads' FIFO, with a head for calls given back by a lane, and a count of
    the dispatchers waiting for an entry (none: every dispatcher is busy)."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.waiting = 0  # dispatcher threads blocked in get()
        self._watchers = 0  # threads in wait_for() (tests)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, entry: Any) -> None:
        with self._cond:
            self._items.append(entry)
            if self._watchers:
                self._cond.notify_all()
            else:
                self._cond.notify()

    def put_front(self, entries: list[Any]) -> None:
        with self._cond:
            self._items.extendleft(reversed(entries))
            self._cond.notify_all()

    def get(self) -> Any:
        with self._cond:
            self.waiting += 1
            try:
                while not self._items:
                    self._cond.wait()
            finally:
                self.waiting -= 1
            return self._popleft()

    def get_nowait(self) -> Any:
        """The head entry; raises ``IndexError`` when there is none."""
        with self._cond:
            return self._popleft()

    def take(self, may: Callable[[Any], bool]) -> Any:
        """The head entry if ``may`` says it may be taken, else None (it stays)."""
        with self._cond:
            if self._items and may(self._items[0]):
                return self._popleft()
            return None

    def _popleft(self) -> Any:
        entry = self._items.popleft()
        if self._watchers:
            self._cond.notify_all()
        return entry

    def wait_for(self, length: int, timeout: float) -> bool:
        """Wait until exactly ``length`` entries are queued (for tests: an event, not a
        sleep). Returns False if ``timeout`` passed first."""
        with self._cond:
            self._watchers += 1
            try:
                return self._cond.wait_for(lambda: len(self._items) == length, timeout)
            finally:
                self._watchers -= 1


class Dispatchers:
    """The dispatcher threads' side of ``SyncPool`` (mixed in)."""

    # Provided by SyncPool.
    config: PoolConfig
    _core: PoolCore
    _queue: DispatchQueue
    _lock: threading.Lock
    _submitted: int
    _lanes: bool
    _serving: set[_submit_sync.Lane]
    _run_item: Callable[[Item], None]

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _mapping_sync.BlockingLane):
                with self._lock:
                    self._submitted -= 1
                item()
                continue
            with self._lock:
                self._submitted -= 1
            if self._lanes and item[6] is None:
                runs, remaining = self._started(item)
                if runs:
                    lane = _submit_sync.Lane(
                        self._core, self._take_queued, self._give_back, self.config.pipeline
                    )
                    with self._lock:
                        self._serving.add(lane)
                    try:
                        lane.serve(item, remaining)
                    finally:
                        with self._lock:
                            self._serving.discard(lane)
                    del lane
            else:
                self._run_item(item)
            # This thread may wait long for the next item: it must not keep this one's
            # function, arguments or future (and so its result) alive until then.
            del item

    def _started(self, item: Item) -> tuple[bool, float | None]:
        """Mark a call picked up as running. Returns whether it runs (not if cancelled, or
        its queue timeout passed: its future says so), and what is left of its queue timeout
        (None: no limit)."""
        fut, queued_at = item[0], item[5]
        # A call given back by a lane (its worker never began it) is running already.
        if not fut.running() and not fut.set_running_or_notify_cancel():
            return False, None
        qt = self.config.queue_timeout
        remaining = None if qt is None else qt - (time.monotonic() - queued_at)
        if remaining is not None and remaining <= 0:
            fut.set_exception(self._core.queue_timeout_error(qt or 0.0))
            return False, None
        return True, remaining

    def _take_queued(self) -> Item | None:
        """For a lane with room: the call at the head of the queue, if it may go behind
        another (not a session's, not a map's lane), picked up and running; None while a
        worker is free (or the pool may grow): a dispatcher takes it there instead."""
        checkout = self._core.checkout
        while True:
            if checkout.idle or checkout._below_max():
                return None
            item: Item | None = self._queue.take(_lane_item)
            if item is None:
                return None
            with self._lock:
                self._submitted -= 1
            if self._started(item)[0]:
                return item

    def _give_back(self, items: list[Item]) -> None:
        """Calls a lane's worker never began: to the head of the queue, in their order."""
        with self._lock:
            self._submitted += len(items)
        self._queue.put_front(items)


def _lane_item(entry: object) -> bool:
    """Whether a queue entry may go behind another call in a lane: a plain submitted call."""
    return type(entry) is tuple and entry[6] is None
