"""``SyncPool.submit``'s pipelining: a dispatcher thread keeps several queued calls in the pipe
of the worker it leased, and reads their replies on its own thread (as ``map``'s lanes do for
chunks, ``_mapping_sync``).

The rules are the asyncio front's (``_pipeline``). A call waits behind another only if it was
already queued when the lane had room (nobody waits for a free worker meanwhile: a free worker
would have taken it), only a plain call (no session, no call timeout), and only behind a call that
began under ``BEHIND_LIMIT`` ago. Once the running call is older than that, the lane takes back
the calls behind it that the worker has not begun (the begun slot's handshake, see
``Channel.take_back``) and puts them back at the head of the queue, where the first free worker
takes them: a call never waits long behind another while a worker could run it. A crash or a
protocol error fails only the calls the worker began; the others go back to the head of the
queue and run elsewhere.

::

    submit() ──> DispatchQueue ──> dispatcher thread ──> serve(): lease a worker,
                    ^   (head)                            write the calls in one go,
                    │                                     read replies, resolve futures
                    └──── calls given back (not begun) ───┘
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from snakeden import _regions
from snakeden._calls import Command, command_name, decode_reply, unpack_batch
from snakeden._channel import ChannelLost, claim_unbegun, is_skipped_reply
from snakeden._crashes import MAX_DISPATCHES, is_violation
from snakeden._errors import ProtocolError
from snakeden._handle import Cause, WorkerHandle
from snakeden._mapping import _chunk_budget
from snakeden._mapping_sync import _unsent_blocking
from snakeden._pipeline import BEHIND_LIMIT, MAX_DEPTH
from snakeden._protocol import (
    FEATURE_BEGUN,
    KIND_CALL,
    NO_REGION,
    PICKLE,
    Frame,
    Kind,
    encode_header,
)
from snakeden._shm import note_skip
from snakeden._stats import Outcome

if TYPE_CHECKING:
    from snakeden._core import PoolCore
    from snakeden._sessions import SessionRecord

#: A submitted call: its future, command, args, kwargs, batch flag, when it was queued, its
#: session (None: any worker) and how many times a worker that died before beginning it had it.
Item = tuple[
    cf.Future[Any],
    Command,
    tuple[Any, ...],
    dict[str, Any],
    bool,
    float,
    "SessionRecord | None",
    int,
]

_HOST_CALL: Final = int(Kind.HOST_CALL)
log = logging.getLogger("snakeden")


class _LeaseGone(Exception):
    """The lease ended under the lane (``PoolCore.place`` gave it back when it failed)."""


@dataclass(slots=True)
class _Sent:
    item: Item
    name: str
    ident: int
    end: int  # where its frame ends in this lease's writes (bytes)
    sent_at: float
    waited: float
    asked: bool = False  # asked to skip it, and the worker may have begun it: its reply says


class Lane:
    """One lease of one worker by a dispatcher thread, serving queued calls through it."""

    def __init__(
        self,
        core: PoolCore,
        take: Callable[[], Item | None],
        give_back: Callable[[list[Item]], None],
        depth: int,
    ) -> None:
        self.core = core
        self.take = take  # the next queued call this lane may send, accounted as picked up
        self.give_back = give_back  # calls to the head of the queue, accounted as queued again
        self.depth = min(depth, MAX_DEPTH)
        self.inflight: deque[_Sent] = deque()
        self.written = 0
        self.worker: WorkerHandle | None = None  # leased, while it serves

    def serve(self, first: Item, queue_timeout: float | None) -> None:
        """Run ``first`` (already marked running) and what queues behind it. Never raises:
        every call's outcome is its future's."""
        core = self.core
        try:
            w, waited = core.checkout_blocking(queue_timeout)
        except BaseException as exc:
            first[0].set_exception(exc)
            return
        self.worker = w
        channel = w.channel
        assert channel is not None
        try:
            channel.begin_blocking()
        except ChannelLost as lost:  # broke while idle: the call never reached it
            if core.call_lost(w, lost, waited, time.perf_counter(), first[7]):
                self.give_back([_again(first)])
            else:
                w.gone.wait(5.0)
                first[0].set_exception(core.crash_error(w, lost, command_name(first[1])[0]))
            return
        depth = self.depth if FEATURE_BEGUN in w.features and channel.begun is not None else 1
        w.current_command = command_name(first[1])[0]
        try:
            self._run(w, first, waited, depth)
        except _LeaseGone:
            return
        except BaseException as exc:  # a bug: the worker's state is unknown
            log.exception("snakeden: a submit() lane failed; its calls fail with the error")
            core.worker_failed(w, Cause.INTERRUPTED)
            core.release(w, None)
            for s in self.inflight:
                if not s.item[0].done():
                    s.item[0].set_exception(exc)

    def _run(self, w: WorkerHandle, first: Item, waited: float, depth: int) -> None:
        core = self.core
        channel = w.channel
        assert channel is not None
        clock = core.checkout.clock
        inflight = self.inflight
        replies: dict[int, Frame] = {}
        budget = _chunk_budget(w)
        began = clock()  # when the running call began (the host's view)
        last_run = w.last_run  # how long the previous call ran: after a long one, none join
        taken = False  # the calls behind the running one were taken back: none join it now
        nxt: Item | None = first
        while True:
            batch: list[bytes] = []
            while budget and len(inflight) < depth:
                if nxt is None:
                    if (
                        taken
                        or not inflight
                        or clock() - began >= BEHIND_LIMIT
                        or last_run >= BEHIND_LIMIT
                    ):
                        break
                    nxt = self.take()
                    if nxt is None:
                        break
                item, nxt = nxt, None
                data = self._frame(w, item, waited if item is first else 0.0, bool(inflight))
                if data is None:
                    continue
                batch.append(data)
                budget -= 1
            if batch:
                try:
                    channel.write_blocking(batch[0] if len(batch) == 1 else b"".join(batch), None)
                except ChannelLost as lost:
                    self._lost(w, lost, replies)
                    return
            if not inflight:
                break
            deadline = None
            room = budget and len(inflight) < depth and last_run < BEHIND_LIMIT
            if not taken and (len(inflight) > 1 or room):
                # While the running call is young, look at the queue again (calls may join it)
                # and, once it is not, take back the calls behind it.
                left = BEHIND_LIMIT - (clock() - began)
                deadline = time.monotonic() + max(left, 0.0)
            try:
                frames = channel.read_frames_blocking(deadline)
            except TimeoutError:
                if clock() - began >= BEHIND_LIMIT:
                    self._take_back(w)
                    taken = True
                continue
            except ChannelLost as lost:
                self._lost(w, lost, replies)
                return
            for frame in frames:
                if frame.kind == _HOST_CALL:
                    channel.host_call(frame)
                else:
                    replies[frame.id] = frame
            while inflight and inflight[0].ident in replies:
                s = inflight.popleft()
                frame = replies.pop(s.ident)
                now = clock()
                last_run, began, taken = now - began, now, False  # the next call begins now
                w.last_run = last_run  # for the worker's next lease (this lane owns it)
                if s.asked and is_skipped_reply(frame):
                    self._taken([s.item])  # the worker saw the note after all
                    continue
                try:
                    outcome = _resolve(w, s, frame)
                except ProtocolError:
                    core.worker_failed(w, Cause.PROTOCOL)  # its future has the error
                    core.checkout.count(w, "crashed", s.waited, time.perf_counter() - s.sent_at)
                    self._lost(w, ChannelLost(None), replies)
                    return
                core.checkout.count(w, outcome, s.waited, time.perf_counter() - s.sent_at)
        core.release(w, None)

    def _frame(self, w: WorkerHandle, item: Item, waited: float, behind: bool) -> bytes | None:
        """The CALL frame for ``item`` on ``w`` (noted in flight), or None if it cannot go:
        encoding failed (its future has the error) or it needs the region while another call
        is in flight (given back). Raises _LeaseGone if writing its region failed (the error
        is its future's, and the lease was given back)."""
        core = self.core
        fut, cmd, args, kwargs, batch = item[:5]
        try:
            name, flags, body = core.encode_call(cmd, args, kwargs, batch=batch)
        except BaseException as exc:
            fut.set_exception(exc)
            return None
        if type(body) is not bytes:
            if behind:  # its buffers go by the region, which the running call may hold
                self.give_back([item])
                return None
            try:
                body = core.place(w, body)  # type: ignore[arg-type]  # gives the lease back if it fails
            except BaseException as exc:
                fut.set_exception(exc)
                raise _LeaseGone from None
        channel = w.channel
        assert channel is not None
        ident = channel.next_id()
        if behind:
            flags |= NO_REGION  # and the worker fences before it begins it (see _shm.fence)
        data = encode_header(KIND_CALL, ident, len(body), flags) + body
        self.written += len(data)
        self.inflight.append(_Sent(item, name, ident, self.written, time.perf_counter(), waited))
        return data

    def _take_back(self, w: WorkerHandle) -> None:
        """The running call is past BEHIND_LIMIT: take back every call behind it the worker
        has not begun; those it may have begun are asked to be skipped (their replies say)."""
        channel = w.channel
        assert channel is not None and channel.begun is not None
        slot = channel.begun
        behind = [s for s in list(self.inflight)[1:] if not s.asked]
        if not behind:
            return
        # Noted once each (``asked``), so straight into the ring, not through the channel's
        # own bookkeeping, which only its asyncio mode clears as replies come.
        taken = claim_unbegun(slot, [s.ident for s in behind], lambda i: note_skip(slot, i))
        for s in behind:
            s.asked = True
            if s.ident in taken:
                self.inflight.remove(s)
        self._taken([s.item for s in behind if s.ident in taken])

    def _taken(self, items: list[Item]) -> None:
        if not items:
            return
        with self.core.checkout.lock:
            self.core.checkout.counters.calls_taken_back += len(items)
        self.give_back(items)

    def _lost(self, w: WorkerHandle, lost: ChannelLost, replies: dict[int, Frame]) -> None:
        """The worker is finished: each call in flight is judged once it is gone. Answered
        before: its reply. Provably never begun: back to the head of the queue. Else: failed
        as the crash (or protocol error) it was."""
        core = self.core
        core.worker_failed(w, Cause.PROTOCOL if is_violation(lost) else Cause.CRASHED)
        w.gone.wait(5.0)  # what it began is final once it is gone, and its exit is known
        again: list[Item] = []
        for s in self.inflight:
            frame = replies.pop(s.ident, None)
            latency = time.perf_counter() - s.sent_at
            if frame is not None and s.asked and is_skipped_reply(frame):
                self._taken([s.item])  # skipped: it never ran
            elif frame is not None:
                try:
                    outcome = _resolve(w, s, frame)
                except ProtocolError:
                    outcome = "crashed"
                core.checkout.count(w, outcome, s.waited, latency)
            elif (
                _unsent_blocking(w, s.ident, s.end, self.written) and s.item[7] + 1 < MAX_DISPATCHES
            ):
                with core.checkout.lock:
                    core.checkout.counters.calls_redispatched += 1
                again.append(_again(s.item))
            else:
                core.checkout.count(w, "crashed", s.waited, latency)
                s.item[0].set_exception(core.crash_error(w, lost, s.name))
        self.inflight.clear()
        core.release(w, None)
        if again:
            self.give_back(again)


def _resolve(w: WorkerHandle, s: _Sent, frame: Frame) -> Outcome:
    """Settle ``s``'s future from its reply. Raises ProtocolError (also set on the future)
    for a reply that cannot be read."""
    fut = s.item[0]
    try:
        if frame.flags & PICKLE or _regions.EXT_REGION in frame.body:
            _regions.reading(w.region_out)
        result = decode_reply(frame, s.name)
        if s.item[4]:
            result = unpack_batch(result, s.name)
    except ProtocolError as exc:
        fut.set_exception(exc)
        raise
    except BaseException as exc:
        fut.set_exception(exc)
        return "failed"
    fut.set_result(result)
    return "ok"


def _again(item: Item) -> Item:
    return (*item[:7], item[7] + 1)
