"""``map`` for both fronts: chunks as single frames, several in flight per worker.

A map cuts its items into chunks; each chunk is one BATCH call (one frame each way, one tight
loop in the worker, see ``worker._run_batch``). One *lane* per worker leases a worker and keeps
several chunks in flight on it, sending more as replies come in, so the worker never idles while
the host turns a reply into the next request. How many: enough to hold ``MAP_QUEUED_S`` of the
worker's work (``MapJob.depth``, from the time a chunk takes), between ``MAP_DEPTH_MIN`` and
``MAP_DEPTH_MAX``. Tiny chunks need many in flight (the host's reaction time on a loaded machine
is longer than a chunk of trivial calls), slow ones few (what is queued on a worker is what a
caller arriving later waits behind, and what the other lanes cannot take at the end of a map).
A lane gives its worker back as soon as another caller queues for one (it stops sending, lets
what is in flight finish, and releases), so a long map does not starve other calls.

Crash isolation is that of a single call: a worker runs its calls one at a time, in order, so
when it dies (or its running chunk times out and it is killed), only the chunk it was running
fails; the chunks queued behind it never began (the channel knows: ``ChannelLost.unsent``, from
the worker's "begun" slot or the bytes it never read) and go back to the queue for another lane.

Chunk size when none is given (``chunksize=None``, the default): ``ceil(items / (4 * workers))``,
at most ``AUTO_MAX_CHUNK`` -- four chunks per worker as ``multiprocessing.Pool.map`` does, capped so
that a huge map still streams and shows progress. A chunk whose frame would be too large is
split in halves until it fits (one item that does not fit fails with ``PayloadTooLarge``).
``chunksize=1`` keeps one call per item (each with its own timeout and crash isolation).
"""

from __future__ import annotations

import asyncio
import operator
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from snakeden import _regions
from snakeden._calls import Command, decode_reply, error_from_body
from snakeden._channel import ChannelLost
from snakeden._crashes import MAX_DISPATCHES
from snakeden._errors import PayloadTooLarge, ProtocolError
from snakeden._handle import Cause, WorkerHandle
from snakeden._protocol import FLAT, Frame, Kind, encode_header
from snakeden._stats import Outcome

if TYPE_CHECKING:
    from snakeden._core import PoolCore
    from snakeden._progress import Tracker

#: Chunks in flight per worker: one running, the next ones already in its pipe; this many until
#: a chunk's time is known, then as many as hold MAP_QUEUED_S of work, within the bounds. A lane
#: refills when half are left, so that several chunks go in one write.
MAP_DEPTH = 4
MAP_DEPTH_MIN = 2
MAP_DEPTH_MAX = 32
MAP_QUEUED_S = 0.005
AUTO_CHUNKS_PER_WORKER = 4
AUTO_MAX_CHUNK = 4096
#: Blocking lanes only: more than one chunk in flight only while all of them fit in this many
#: bytes, far below a pipe's capacity, so the host's write can never block while the worker
#: blocks writing a reply the host is not reading yet.
BLOCKING_PIPELINE_BYTES = 32 * 1024


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


def auto_chunksize(items: int, workers: int) -> int:
    """The chunk size ``map`` uses when none is given (the rule in the module docstring)."""
    per = -(-items // (AUTO_CHUNKS_PER_WORKER * max(1, workers)))
    return max(1, min(AUTO_MAX_CHUNK, per))


class _Chunk:
    __slots__ = ("attempts", "body", "first", "flags", "items")

    def __init__(self, first: int, items: list[Any], flags: int, body: bytes) -> None:
        self.first = first  # index of its first item in the map
        self.items = items  # values (FLAT) or argument lists
        self.flags = flags
        self.body = body
        self.attempts = 0


class MapJob:
    """One map's shared state: chunks still to send, results, failures. Lanes of either front
    take chunks from it; the blocking front's lanes run on several threads (``lock``).

    ``flat``: ``items`` are the single arguments of the calls, sent as BATCH|FLAT to workers
    that take it (Python workers do; others get the same chunk as plain BATCH)."""

    def __init__(
        self,
        core: PoolCore,
        cmd: Command,
        items: list[Any],
        chunksize: int,
        bar: Tracker | None,
        *,
        flat: bool,
    ) -> None:
        self.core = core
        self.cmd = cmd
        self.n = len(items)
        self.results: list[Any] = [None] * self.n
        self.errors: dict[int, BaseException] = {}  # item index -> its failure
        self.bar = bar
        self.lock = threading.Lock()
        self.name = ""
        self.todo: deque[_Chunk] = deque()
        flat = flat and core.launcher.runs_python
        for first in range(0, self.n, chunksize):
            self._add(first, items[first : first + chunksize], flat)
        self.waiting_lanes = 0  # this map's own lanes queued for a worker
        self.chunk_s = 0.0  # a chunk's time on a worker, smoothed (0: none measured yet)

    def depth(self) -> int:
        """How many chunks a lane keeps in flight (see the module docstring)."""
        if not self.chunk_s:
            return MAP_DEPTH
        return max(MAP_DEPTH_MIN, min(MAP_DEPTH_MAX, int(MAP_QUEUED_S / self.chunk_s)))

    def timed(self, seconds: float) -> None:
        """A chunk took ``seconds`` (from the previous reply on its worker, or from its send)."""
        # Lanes on several threads may race here; a lost update only delays the estimate.
        self.chunk_s = seconds if not self.chunk_s else 0.75 * self.chunk_s + 0.25 * seconds

    def _add(self, first: int, items: list[Any], flat: bool) -> None:
        try:
            name, flags, body = self.core.encode_call(self.cmd, items, None, batch=True, flat=flat)
        except PayloadTooLarge:
            if len(items) == 1:
                raise
            half = len(items) // 2
            self._add(first, items[:half], flat)
            self._add(first + half, items[half:], flat)
            return
        self.name = name
        self.todo.append(_Chunk(first, items, flags, body))

    def frame(self, chunk: _Chunk, ident: int, w: WorkerHandle) -> bytes:
        """The CALL frame of ``chunk`` for ``w`` (plain BATCH for a worker without FLAT)."""
        if chunk.flags & FLAT and not w.takes_flat:
            chunk.items = [[v] for v in chunk.items]
            _name, chunk.flags, chunk.body = self.core.encode_call(
                self.cmd, chunk.items, None, batch=True
            )
        return encode_header(Kind.CALL, ident, len(chunk.body), chunk.flags) + chunk.body

    def take(self) -> _Chunk | None:
        with self.lock:
            return self.todo.popleft() if self.todo else None

    def put_back(self, chunk: _Chunk, *, sent: bool = True) -> None:
        """A chunk that provably never began (or, ``sent=False``, was taken and not sent):
        another lane sends it (first, to keep order)."""
        chunk.attempts += sent
        with self.lock:
            self.todo.appendleft(chunk)

    def others_waiting(self) -> bool:
        """Whether a caller other than this map's own lanes queues for a worker."""
        return len(self.core.checkout.waiters) > self.waiting_lanes

    def fail(self, chunk: _Chunk, exc: BaseException) -> None:
        for i in range(chunk.first, chunk.first + len(chunk.items)):
            self.errors[i] = exc
        self._advance(chunk)

    def reply(self, chunk: _Chunk, frame: Frame) -> Outcome:
        """Store a chunk's results; the outcome to count. Raises ProtocolError for a reply that
        breaks the protocol (the caller kills the worker)."""
        _regions.reading(None)  # batches never go through a region
        try:
            pairs = decode_reply(frame, self.name)
        except ProtocolError:
            raise
        except Exception as exc:  # the whole chunk failed (an unknown command, a bad call)
            self.fail(chunk, exc)
            return "failed"
        if type(pairs) is not list or len(pairs) != len(chunk.items):
            raise ProtocolError(f"worker sent a malformed batch reply for {self.name!r}")
        first = chunk.first
        if frame.flags & chunk.flags & FLAT:  # every item succeeded: the values, in order
            self.results[first : first + len(pairs)] = pairs
            self._advance(chunk)
            return "ok"
        try:  # itemgetter over the pairs: C loops, not Python ones
            self.results[first : first + len(pairs)] = map(_second, pairs)
            oks = list(map(_first, pairs))
        except (TypeError, IndexError, KeyError):
            raise ProtocolError(f"worker sent a malformed batch reply for {self.name!r}") from None
        bad = (
            [] if oks.count(True) == len(oks) else [k for k, ok in enumerate(oks) if ok is not True]
        )
        for k in bad:
            self.results[first + k] = None
            self.errors[first + k] = error_from_body(pairs[k][1], self.name)
        outcome: Outcome = "failed" if bad else "ok"
        self._advance(chunk)
        return outcome

    def _advance(self, chunk: _Chunk) -> None:
        if self.bar is not None:
            self.bar.advance(len(chunk.items))

    def each(self) -> tuple[list[Any], BaseException | None]:
        """The results in input order up to the first item that failed, and that item's failure
        (None if none failed): ``Executor.map`` yields the first and then raises the second.
        A list, not a generator, so that the caller's generator yields it from C."""
        if not self.errors:
            return self.results, None
        stop = min(self.errors)
        return self.results[:stop], self.errors[stop]

    def outcome(self) -> list[Any]:
        """The results in input order, or the failure of the first item that failed."""
        if self.errors:
            raise self.errors[min(self.errors)]
        return self.results


# --- the asyncio front -------------------------------------------------------------------------


async def run_async(
    job: MapJob, timeout: float | None, queue_timeout: float | None, lanes: int
) -> list[Any]:
    tasks = [asyncio.ensure_future(_lane_async(job, timeout, queue_timeout)) for _ in range(lanes)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return job.outcome()


async def _lane_async(job: MapJob, timeout: float | None, queue_timeout: float | None) -> None:
    core = job.core
    while job.todo:
        job.waiting_lanes += 1
        try:
            w, waited = await core.checkout_async(queue_timeout)
        finally:
            job.waiting_lanes -= 1
        await _serve_async(job, w, waited, timeout)


class _Expired(Exception):
    pass


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


async def _serve_async(job: MapJob, w: WorkerHandle, waited: float, timeout: float | None) -> None:
    """Keep up to MAP_DEPTH chunks in flight on ``w`` until the chunks run out (or another
    caller wants a worker); then give ``w`` back. Exactly one release per lease."""
    core = job.core
    channel = w.channel
    assert channel is not None
    w.current_command = job.name
    budget = _chunk_budget(w)
    inflight: deque[tuple[_Chunk, int, asyncio.Future[Frame]]] = deque()
    t_prev = time.perf_counter()

    def fill() -> None:
        nonlocal budget
        depth = job.depth()
        if len(inflight) > depth // 2:
            return  # refill several at once: one write to the worker, not one per chunk
        while budget and len(inflight) < depth and not (inflight and job.others_waiting()):
            chunk = job.take()
            if chunk is None:
                return
            budget -= 1
            ident = channel.next_id()
            fut = channel.expect(ident)
            channel.send(job.frame(chunk, ident, w), ident)
            inflight.append((chunk, ident, fut))

    fill()
    outcome: Outcome | None = None
    while inflight:
        chunk, ident, fut = inflight[0]
        timer = core.loop.call_later(timeout, _expire, fut) if timeout is not None else None
        try:
            frame = await fut
        except asyncio.CancelledError:
            _abandon_async(job, w, inflight, waited, t_prev)
            raise
        except _Expired:
            channel.forget(ident)
            inflight.popleft()
            job.fail(chunk, core.call_timed_out(w, job.name, timeout, waited, t_prev))
            await _requeue_async(job, w, inflight)
            return
        except ChannelLost as lost:
            inflight.popleft()
            await _lost_async(job, w, chunk, lost, waited=waited, t1=t_prev)
            await _requeue_async(job, w, inflight)
            return
        finally:
            if timer is not None:
                timer.cancel()
        inflight.popleft()
        if outcome is not None:
            # Each chunk counts as a call; its time is since the previous reply.
            t_prev = _count(job, w, outcome, waited, t_prev)
            waited = 0.0
        try:
            outcome = job.reply(chunk, frame)
        except ProtocolError as exc:
            job.fail(chunk, exc)
            core.worker_failed(w, Cause.PROTOCOL)
            core.release(w, "crashed", waited, time.perf_counter() - t_prev)
            await _requeue_async(job, w, inflight)
            return
        fill()
    core.release(w, outcome, waited, time.perf_counter() - t_prev)


async def _lost_async(
    job: MapJob, w: WorkerHandle, chunk: _Chunk, lost: ChannelLost, *, waited: float, t1: float
) -> None:
    core = job.core
    if core.call_lost(w, lost, waited, t1, chunk.attempts):
        job.put_back(chunk)
        return
    await core.wait_gone(w)  # for the exit status and the last stderr lines
    job.fail(chunk, core.crash_error(w, lost, job.name))


async def _requeue_async(
    job: MapJob, w: WorkerHandle, inflight: deque[tuple[_Chunk, int, asyncio.Future[Frame]]]
) -> None:
    """The worker is being killed (released already): the chunks behind the one it ran learn
    from the lost channel whether they began; those that did not go to another lane."""
    core = job.core
    for chunk, _ident, fut in inflight:
        try:
            frame = await fut
        except ChannelLost as lost:
            if lost.unsent and chunk.attempts + 1 < MAX_DISPATCHES:
                with core.checkout.lock:
                    core.checkout.counters.calls_redispatched += 1
                job.put_back(chunk)
            else:
                await core.wait_gone(w)
                job.fail(chunk, core.crash_error(w, lost, job.name))
            continue
        try:  # it finished just before the worker was killed
            job.reply(chunk, frame)
        except ProtocolError as exc:
            job.fail(chunk, exc)


def _abandon_async(
    job: MapJob,
    w: WorkerHandle,
    inflight: deque[tuple[_Chunk, int, asyncio.Future[Frame]]],
    waited: float,
    t1: float,
) -> None:
    """The map was cancelled with chunks in flight: let them finish (within ``cancel_grace``,
    or the worker is killed), then give the worker back."""
    core = job.core
    futs = [fut for _, _, fut in inflight]
    channel = w.channel
    assert channel is not None
    if channel.lost is not None:
        core.worker_failed(w, Cause.CRASHED)
        core.release(w, "cancelled", waited, time.perf_counter() - t1)
        return
    for _, ident, _fut in inflight:
        channel.notify(encode_header(Kind.CANCEL, ident, 0))
    kill = core.loop.call_later(
        core.config.cancel_grace, core.worker_failed, w, Cause.CANCEL_IGNORED
    )
    drain = asyncio.gather(*futs, return_exceptions=True)

    def done(f: asyncio.Future[list[Any]]) -> None:
        kill.cancel()
        if any(isinstance(r, BaseException) for r in f.result()):
            core.worker_failed(w, Cause.CRASHED)
        core.release(w, "cancelled", waited, time.perf_counter() - t1)

    drain.add_done_callback(done)


def _count(job: MapJob, w: WorkerHandle, outcome: Outcome, waited: float, since: float) -> float:
    now = time.perf_counter()
    job.core.count(w, outcome, waited, now - since)
    job.timed(now - since)
    return now


def _chunk_budget(w: WorkerHandle) -> int:
    """Chunks one lease may send: unbounded, except for a worker recycled after ``max_calls``."""
    if w.max_calls is None:
        return -1  # never reaches 0
    return max(1, w.max_calls - w.calls)
