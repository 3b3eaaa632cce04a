"""``SyncPool.map``'s lanes: one thread per lane leases a worker and keeps several chunks of the
map in its pipe, reading replies on that thread (the chunks, their frames and the shared rules
are ``_mapping``'s). A chunk a dead worker never began runs on another worker."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from snakeden._channel import ChannelLost, ident_begun
from snakeden._crashes import MAX_DISPATCHES
from snakeden._errors import ProtocolError
from snakeden._handle import Cause, WorkerHandle
from snakeden._protocol import HEADER_SIZE, Frame
from snakeden._stats import Outcome

if TYPE_CHECKING:
    pass

from snakeden._mapping import (
    BLOCKING_PIPELINE_BYTES,
    MapJob,
    _Chunk,
    _chunk_budget,
    _count,
)


class BlockingLane:
    """One lane of a ``SyncPool`` map, run by a dispatcher thread."""

    def __init__(
        self,
        job: MapJob,
        timeout: float | None,
        queue_timeout: float | None,
        done: Callable[[BaseException | None], None],
    ) -> None:
        self.job = job
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self.done = done
        self.cancelled = False

    def cancel(self) -> None:
        """Never to run (the pool shuts down with ``cancel_futures``): the map is cancelled."""
        self.cancelled = True
        self.done(cf.CancelledError())

    def __call__(self) -> None:
        job = self.job
        try:
            while job.todo and not self.cancelled:
                with job.lock:
                    job.waiting_lanes += 1
                try:
                    w, waited = job.core.checkout_blocking(self.queue_timeout)
                finally:
                    with job.lock:
                        job.waiting_lanes -= 1
                self._serve(w, waited)
        except BaseException as exc:
            self.done(exc)
            return
        # Stopped with chunks unsent: their items have no results.
        self.done(cf.CancelledError() if self.cancelled and job.todo else None)

    def _serve(self, w: WorkerHandle, waited: float) -> None:
        job = self.job
        core = job.core
        channel = w.channel
        assert channel is not None
        w.current_command = job.name
        budget = _chunk_budget(w)
        # (chunk, ident, byte offset where its frame ends in this lease's writes)
        inflight: deque[tuple[_Chunk, int, int]] = deque()
        inflight_bytes = 0
        written = 0
        replies: dict[int, Frame] = {}
        t_prev = time.perf_counter()
        outcome: Outcome | None = None
        try:
            channel.begin_blocking()
        except ChannelLost as lost:
            chunk = job.take()
            if chunk is not None:
                self._lost(w, chunk, lost, waited, t_prev)
            else:
                core.call_lost(w, lost, waited, t_prev, 0)
            return
        while True:
            batch: list[bytes] = []  # refilled in one write, as the asyncio lanes do
            depth = job.depth()
            while (
                budget
                and not self.cancelled
                and len(inflight) < depth
                and (len(inflight) <= depth // 2 or batch)
            ):
                if inflight and (job.others_waiting() or inflight_bytes >= BLOCKING_PIPELINE_BYTES):
                    break
                chunk = job.take()
                if chunk is None:
                    break
                if inflight and inflight_bytes + len(chunk.body) > BLOCKING_PIPELINE_BYTES:
                    job.put_back(chunk, sent=False)
                    break
                budget -= 1
                ident = channel.next_id()
                batch.append(job.frame(chunk, ident, w))
                written += len(batch[-1])
                inflight_bytes += len(batch[-1])
                inflight.append((chunk, ident, written))
            if batch:
                try:
                    channel.write_blocking(batch[0] if len(batch) == 1 else b"".join(batch), None)
                except ChannelLost as lost:
                    # Judged by what the worker began (a chunk not written whole never was).
                    self._after_loss(w, inflight, written, lost, waited=waited, t1=t_prev)
                    return
            if not inflight:
                break
            chunk, ident, _end = inflight[0]
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            try:
                while ident not in replies:
                    for frame in channel.read_frames_blocking(deadline):
                        replies[frame.id] = frame
            except TimeoutError:
                inflight.popleft()
                job.fail(chunk, core.call_timed_out(w, job.name, self.timeout, waited, t_prev))
                w.gone.wait(5.0)  # killed: what it began is final once it is gone
                self._requeue(w, inflight, written, ChannelLost(None), replies)
                return
            except ChannelLost as lost:
                self._after_loss(
                    w, inflight, written, lost, waited=waited, t1=t_prev, replies=replies
                )
                return
            except BaseException:
                core.worker_failed(w, Cause.INTERRUPTED)
                core.release(w, None)
                raise
            inflight.popleft()
            inflight_bytes -= len(chunk.body) + HEADER_SIZE
            if outcome is not None:
                t_prev = _count(job, w, outcome, waited, t_prev)
                waited = 0.0
            try:
                outcome = job.reply(chunk, replies.pop(ident))
            except ProtocolError as exc:
                job.fail(chunk, exc)
                core.worker_failed(w, Cause.PROTOCOL)
                core.release(w, "crashed", waited, time.perf_counter() - t_prev)
                w.gone.wait(5.0)
                self._requeue(w, inflight, written, ChannelLost(exc), replies)
                return
        if outcome is None:
            core.release(w, None)
        else:
            core.release(w, outcome, waited, time.perf_counter() - t_prev)

    def _after_loss(
        self,
        w: WorkerHandle,
        inflight: deque[tuple[_Chunk, int, int]],
        written: int,
        lost: ChannelLost,
        *,
        waited: float,
        t1: float,
        replies: dict[int, Frame] | None = None,
    ) -> None:
        """The channel ended with ``inflight`` sent: the oldest chunk ran (unless it provably
        did not), the others are judged one by one."""
        job = self.job
        if not inflight:
            job.core.call_lost(w, lost, waited, t1, 0)
            return
        w.gone.wait(5.0)  # what it began is final once it is gone
        chunk, ident, end = inflight.popleft()
        unsent = _unsent_blocking(w, ident, end, written)
        self._lost(w, chunk, lost.for_request(unsent), waited, t1)
        self._requeue(w, inflight, written, lost, replies or {})

    def _lost(
        self, w: WorkerHandle, chunk: _Chunk, lost: ChannelLost, waited: float, t1: float
    ) -> None:
        core = self.job.core
        if core.call_lost(w, lost, waited, t1, chunk.attempts):
            self.job.put_back(chunk)
            return
        w.gone.wait(5.0)
        self.job.fail(chunk, core.crash_error(w, lost, self.job.name))

    def _requeue(
        self,
        w: WorkerHandle,
        inflight: deque[tuple[_Chunk, int, int]],
        written: int,
        lost: ChannelLost,
        replies: dict[int, Frame],
    ) -> None:
        job = self.job
        core = job.core
        rest = list(inflight)
        for chunk, ident, end in rest:
            frame = replies.pop(ident, None)
            if frame is not None:  # it finished before the worker was lost
                try:
                    job.reply(chunk, frame)
                except ProtocolError as exc:
                    job.fail(chunk, exc)
                continue
            if _unsent_blocking(w, ident, end, written) and chunk.attempts + 1 < MAX_DISPATCHES:
                with core.checkout.lock:
                    core.checkout.counters.calls_redispatched += 1
                job.put_back(chunk)
            else:
                job.fail(chunk, core.crash_error(w, lost, job.name))


def _unsent_blocking(w: WorkerHandle, ident: int, end: int, written: int) -> bool:
    """Whether the chunk sent as ``ident`` (its frame ending at byte ``end`` of this lease's
    writes) provably never began on the dead worker ``w``."""
    channel = w.channel
    assert channel is not None
    if end > written - channel.unread():
        return True  # never read whole
    if channel.begun is None:
        return False
    # The ids of one lease increase (modulo 2**32, and far fewer than 2**31 at once): a chunk
    # sent after the one the worker last began never began.
    return 0 < (ident - ident_begun(channel.begun)) % (1 << 32) < (1 << 31)
