"""What both fronts (asyncio ``Pool``, thread ``SyncPool``) share: one pool's parts, wired.

Data flow::

    caller (task or thread)                         PoolCore
    -----------------------                         --------
    encode_call() (fails here if unserialisable)
    checkout_async() / checkout_blocking() ------>  Checkout.acquire(): idle worker, leased
                                                    to the caller, or a FIFO waiter
    write CALL, wait for the reply  <--- channel ---> worker process (python -m snakeden.worker)
    finish_call() / call_lost() / call_timed_out() -> Checkout.release() -> Actions
                                                    -> Supervisor.act(): wake the next waiter,
                                                       retire, replace, check memory

The parts: :mod:`~snakeden._checkout` (plain state: leases, waiters, decisions),
:mod:`~snakeden._handle` (a worker's state machine), :mod:`~snakeden._supervisor` (processes:
start, exits, replacement, health, shutdown), :mod:`~snakeden._channel` (one worker's pipes).
No manager task or thread sits between a caller and a worker: the caller takes the worker itself,
and a front only adds its own way of waiting (a future, or a blocking read).

Turning a failure into the caller's error happens here, once for both fronts: a call that
provably never reached its worker (the channel was already lost, or the worker never read it
whole) is sent to another worker; one that may have run fails with the crash or timeout error.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from snakeden import _regions, _shm
from snakeden._calls import Command, RegionBody, decode_reply, encode_call, unpack_batch
from snakeden._channel import ChannelLost
from snakeden._checkout import Checkout, Phase
from snakeden._config import PoolConfig
from snakeden._crashes import MAX_DISPATCHES, crash_error, is_violation
from snakeden._errors import (
    CallTimeout,
    PayloadTooLarge,
    ProtocolError,
    QueueTimeout,
    SessionLost,
    WorkerCrashed,
    WorkerStartError,
)
from snakeden._events import EventHub
from snakeden._handle import Cause, WorkerHandle
from snakeden._host_calls import HostFunctions, refuse_waiting
from snakeden._launchers import make_launcher
from snakeden._pipeline import Sweeper
from snakeden._process import Launcher
from snakeden._protocol import (
    KIND_CALL,
    NO_REGION,
    PICKLE,
    SESSION_ID,
    Frame,
    Kind,
    encode_frame,
    encode_header,
    session_call,
)
from snakeden._reaper import RunRecord, reap_leftovers
from snakeden._sessions import SessionRecord
from snakeden._stats import Outcome, PoolStats
from snakeden._supervisor import Supervisor
from snakeden._waiters import FREE, AsyncWaiter, QueuedCall, ThreadWaiter

if TYPE_CHECKING:
    from snakeden._tracing import CallTracer


class PoolCore:
    """One pool. ``blocking=True`` for the thread front, which reads its channels itself."""

    def __init__(
        self,
        config: PoolConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        blocking: bool,
    ) -> None:
        config.validate()
        self.config = config
        self.loop = loop
        self.run_tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.pickle = config.serializer == "pickle"
        # Shared-memory regions (see _regions): local Python workers and a writable /dev/shm.
        # A region holds one message: a call sent behind another goes by pipe (NO_REGION).
        self.shm = (
            config.shm_threshold
            if config.shm_threshold is not None
            and config.command is None
            and config.backend == "local"  # a Ray worker's node has its own /dev/shm
            and _shm.available()
            else None
        )
        # What every worker's environment gets on top of the host's.
        worker_env = dict(config.env)
        if self.shm is not None:
            worker_env[_regions.ENV] = str(self.shm)
        self.launcher: Launcher = make_launcher(config, self.run_tag, worker_env)
        self.record = RunRecord(self.run_tag)
        # Pipelining needs a channel that multiplexes replies: the asyncio front's.
        self.checkout = Checkout(config, depth=1 if blocking else config.pipeline)
        self.events = EventHub(config.on_event, config.clock)
        self.sweeper = Sweeper(loop, self.checkout, self.events)  # calls behind long ones
        self.sup = Supervisor(
            config,
            loop,
            self.checkout,
            launcher=self.launcher,
            events=self.events,
            record=self.record,
            worker_env=worker_env,
            blocking=blocking,
        )
        self.host = HostFunctions(config.host_functions, loop, config.max_frame_size)
        self.sup.on_host_call = self.host.on_host_call
        self._closing: asyncio.Task[None] | None = None
        self.blocking = blocking
        self.sup.on_sessions_expired = self._sessions_expired
        # Set by snakeden.tracing.instrument(); the fronts test it once per call, where they
        # build the CALL frame, and do nothing else for tracing while it is None.
        self.tracing: CallTracer | None = None

    def __repr__(self) -> str:
        return f"<PoolCore {self.config.target!r} {self.checkout!r} launcher={self.launcher.name}>"

    # --- taking a worker -----------------------------------------------------------------------

    def _async_waiter(self) -> AsyncWaiter:
        refuse_waiting()  # a call from a host function never queues (see _host_calls)
        return AsyncWaiter(self.loop.create_future())

    def queued_call(self, name: str, flags: int, body: bytes) -> QueuedCall:
        """The waiter of a plain call that finds no free worker (see QueuedCall)."""
        refuse_waiting()
        return QueuedCall(self.loop.create_future(), name, flags, body, self.sweeper)

    @staticmethod
    def _thread_waiter() -> ThreadWaiter:
        refuse_waiting()
        return ThreadWaiter()

    async def checkout_async(
        self,
        queue_timeout: float | None,
        session: SessionRecord | None = None,
        mode: int = FREE,
        again: bool = False,
    ) -> tuple[WorkerHandle, float]:
        """A worker leased to the caller (``mode``, ``again``: see Checkout.acquire), and the
        time waited."""
        try:
            if session is None:
                got, grow = self.checkout.acquire(self._async_waiter, mode, again=again)
            else:
                got, grow = self.checkout.acquire_session(session, self._async_waiter)
        finally:
            if again:
                self._returned()
        if isinstance(got, WorkerHandle):
            return got, 0.0
        if grow:
            self.sup.call_soon(self.sup.grow)
        assert isinstance(got, AsyncWaiter)
        t0 = time.perf_counter()
        timer = self.queue_timer(got, queue_timeout)
        try:
            w = await got.fut
        except QueueTimeout:
            raise self.gave_up(got, t0) from None
        except asyncio.CancelledError:
            self.gave_up(got)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return w, time.perf_counter() - t0

    def queue_timer(
        self, got: AsyncWaiter, queue_timeout: float | None
    ) -> asyncio.TimerHandle | None:
        """Fail ``got`` with QueueTimeout after ``queue_timeout``, unless cancelled before."""
        if queue_timeout is None:
            return None
        return self.loop.call_later(queue_timeout, got.fail, self.queue_timeout_error(0))

    def gave_up(self, got: AsyncWaiter, t0: float | None = None) -> QueueTimeout:
        """A queued caller stopped waiting: its queue timeout since ``t0`` (the error to raise),
        or its cancellation (t0 None)."""
        late, drained = self.checkout.give_up(got, cancelled=t0 is None)
        self._after_give_up(late, drained)
        return self.queue_timeout_error(0.0 if t0 is None else time.perf_counter() - t0)

    def checkout_blocking(
        self, queue_timeout: float | None, session: SessionRecord | None = None, again: bool = False
    ) -> tuple[WorkerHandle, float]:
        try:
            if session is None:
                got, grow = self.checkout.acquire(self._thread_waiter, again=again)
            else:
                got, grow = self.checkout.acquire_session(session, self._thread_waiter)
        finally:
            if again:
                self._returned()
        if isinstance(got, WorkerHandle):
            return got, 0.0
        if grow:
            self.sup.call_soon(self.sup.grow)
        assert isinstance(got, ThreadWaiter)
        t0 = time.perf_counter()
        try:
            signalled = got.event.wait(queue_timeout)
        except BaseException:
            late, drained = self.checkout.give_up(got, cancelled=True)
            self._after_give_up(late, drained)
            raise
        if got.error is not None:
            raise got.error
        if not signalled:
            late, drained = self.checkout.give_up(got)
            if late is None:
                self._after_give_up(None, drained)
                raise self.queue_timeout_error(time.perf_counter() - t0)
            return late, time.perf_counter() - t0
        assert got.worker is not None
        return got.worker, time.perf_counter() - t0

    def _returned(self) -> None:
        if self.checkout.returned():
            self.sup.call_soon(self.sup.drained.set)

    def _after_give_up(self, late: WorkerHandle | None, drained: bool) -> None:
        if late is not None:
            self.release(late, None)  # assigned as the caller gave up: pass it on
        elif drained:
            self.sup.call_soon(self.sup.drained.set)

    def queue_timeout_error(self, waited: float) -> QueueTimeout:
        return QueueTimeout(
            f"no worker became free within {waited:.3g}s ({self.config.min_size} workers all "
            f"busy); the call was never sent. Raise queue_timeout or add workers"
        )

    def release(
        self, w: WorkerHandle, outcome: Outcome | None, wait: float = 0.0, latency: float = 0.0
    ) -> None:
        """Give a lease back; ``outcome`` feeds the counters (None: not a call that ran)."""
        act = self.checkout.release(w, outcome, wait, latency)
        if act is not None:
            self.sup.act(act)

    def count(self, w: WorkerHandle, outcome: Outcome, wait: float, latency: float) -> None:
        """Count a call that ran on a lease that goes on (``map``'s chunks)."""
        self.checkout.count(w, outcome, wait, latency)

    # --- a call's way through ----------------------------------------------------------------

    def encode_call(
        self,
        cmd: Command,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        *,
        batch: bool,
        flat: bool = False,
    ) -> tuple[str, int, bytes]:
        """``(name, flags, body)`` of a CALL with this pool's codec, frame limit and shm."""
        return encode_call(
            cmd,
            args,
            kwargs or {},
            pickle=self.pickle,
            max_frame_size=self.config.max_frame_size,
            batch=batch,
            flat=flat,
            shm=self.shm,
        )

    def call_frame(  # noqa: PLR0917 - the call as both fronts hold it at this point
        self,
        w: WorkerHandle,
        name: str,
        ident: int,
        flags: int,
        body: bytes | RegionBody,
        waited: float,
        attempt: int,
        session: SessionRecord | None,
    ) -> bytes:
        """The bytes to write for a call leased on ``w``: its large buffers placed in ``w``'s
        region, its trace context and span (when traced), its session id (and SESSION_OPEN).
        Both fronts write a plain call's frame inline instead (the per-call path). On failure
        the lease is given back and nothing is sent."""
        sent = body if type(body) is bytes else self.place(w, body)  # type: ignore[arg-type]
        if w.inflight > 1:
            flags |= NO_REGION  # behind another call, whose reply may be in the region
        if self.tracing is None:
            data = encode_header(KIND_CALL, ident, len(sent), flags) + sent
        else:  # opens the call's span; the worker may get its trace context
            data = self.tracing.call_frame(w, name, ident, flags, sent, waited, attempt)
        if session is not None:
            try:
                data = self.session_frame(session, w, data)
            except BaseException:
                self.release(w, None)
                raise
        return data

    def place(self, w: WorkerHandle, body: RegionBody) -> bytes:
        """The body to send ``w``: a call's large buffers written to its region, or (a worker
        without one) the call encoded whole. On failure the lease is given back."""
        try:
            if w.region_in is None or w.inflight > 1:  # no region, or it may hold another call
                return body.by_pipe()
            w.region_in.put(body.buffers)
        except BaseException:
            self.release(w, None)
            raise
        return body

    def finish_call(
        self, w: WorkerHandle, frame: Frame, name: str, *, batch: bool, waited: float, t1: float
    ) -> Any:
        """Decode a reply, return the worker (counting the outcome), and return or raise."""
        try:
            if frame.flags & PICKLE or _regions.EXT_REGION in frame.body:
                _regions.reading(w.region_out)
            result = decode_reply(frame, name)
            if batch:
                result = unpack_batch(result, name)
        except ProtocolError:
            self.worker_failed(w, Cause.PROTOCOL)
            self.release(w, "crashed", waited, time.perf_counter() - t1)
            raise
        except BaseException:
            self.release(w, "failed", waited, time.perf_counter() - t1)
            raise
        if self.tracing is not None:  # its release() ends the call's span
            self.release(w, "ok", waited, time.perf_counter() - t1)
            return result
        act = self.checkout.release(w, "ok", waited, time.perf_counter() - t1)  # release(), inlined
        if act is not None:
            self.sup.act(act)
        return result

    def call_lost(
        self,
        w: WorkerHandle,
        lost: ChannelLost,
        waited: float,
        t1: float,
        attempt: int,
        *,
        may_retry: bool = True,
        again: bool = False,
    ) -> bool:
        """The channel ended during a call: the worker is finished either way. True when the
        call provably never reached it and should go to another worker (the caller retries;
        ``may_retry`` False: a strict session's call, which no other worker can run; ``again``:
        the caller retries by a checkout with ``again=True``, so that a draining pool waits)."""
        retry = may_retry and lost.unsent and attempt + 1 < MAX_DISPATCHES
        self.worker_failed(w, Cause.PROTOCOL if is_violation(lost) else Cause.CRASHED)
        if retry and again:  # the caller takes a worker at once, with again=True
            act = self.checkout.resend(w)
            if act is not None:
                self.sup.act(act)
        elif retry:
            with self.checkout.lock:
                self.checkout.counters.calls_redispatched += 1
            self.release(w, None)
        else:
            self.release(w, "crashed", waited, time.perf_counter() - t1)
        return retry

    def call_timed_out(
        self, w: WorkerHandle, name: str, timeout: float | None, waited: float, t1: float
    ) -> CallTimeout:
        self.worker_failed(w, Cause.TIMEOUT)
        self.release(w, "timeout", waited, time.perf_counter() - t1)
        return CallTimeout(
            f"{name!r} did not finish within {timeout}s; worker {w.id} (pid {w.pid}) was "
            f"killed and is being replaced"
        )

    def worker_failed(self, w: WorkerHandle, cause: Cause) -> None:
        """A caller saw the worker fail: out of service and killed. Thread-safe."""
        self.sup.fail(w, cause)

    def crash_error(self, w: WorkerHandle, lost: ChannelLost, command: str) -> WorkerCrashed:
        """The exception for the caller whose call was running when the worker died (call it
        once the exit is known: it names the exit status and the last stderr lines)."""
        return crash_error(w, lost, command)

    # --- sessions --------------------------------------------------------------------------------

    def session_frame(self, rec: SessionRecord, w: WorkerHandle, call: bytes) -> bytes:
        """The CALL frame ``call`` as a call of session ``rec`` on ``w``: the SESSION flag and
        the session id before the body, preceded by SESSION_OPEN on the session's first call
        there. Raises (the caller releases ``w``) if the session cannot run there."""
        need_open = self.checkout.session_on(rec, w)
        size = len(call) + SESSION_ID.size
        if size > self.config.max_frame_size:
            raise PayloadTooLarge(
                f"the call is {size} bytes with its session id, over the maximum frame size of "
                f"{self.config.max_frame_size} bytes; send less per call. Nothing was sent"
            )
        data = session_call(call, rec.id)
        return encode_frame(Kind.SESSION_OPEN, rec.id) + data if need_open else data

    def session_lost(self, rec: SessionRecord, w: WorkerHandle) -> SessionLost:
        """A strict session's call never reached its worker, which is gone: no other worker has
        the session's state, so the call is not sent elsewhere."""
        return SessionLost(
            f"worker {w.id} (pid {w.pid}), which held session {rec.id}, died before the call "
            f"reached it; the call did not run. Open a new session"
        )

    def close_session(self, rec: SessionRecord) -> None:
        """Drop the session here and in each worker that holds its state (SESSION_CLOSE). From
        the loop (asyncio front) or any thread (thread front)."""
        for w in self.checkout.close_session(rec):
            data = encode_frame(Kind.SESSION_CLOSE, rec.id)
            if not self.blocking:
                if w.channel is not None:
                    w.channel.notify(data)  # the loop orders it with every other write
            elif self.checkout.post_close(w, data):  # idle: leased to us to send it
                try:
                    if w.channel is not None:
                        w.channel.notify(self.checkout.take_outbox(w))
                finally:
                    self.release(w, None)
            # else: the worker's current lease ends with a lease that sends it (Actions.flush)

    def _sessions_expired(self, recs: list[SessionRecord]) -> None:
        for rec in recs:
            self.close_session(rec)

    async def wait_gone(self, w: WorkerHandle, timeout: float = 5.0) -> None:
        await self.sup.wait_gone(w, timeout)

    # --- life of the pool --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the launcher and the workers concurrently; return once enough are ready."""
        self.checkout.phase = Phase.STARTING
        await asyncio.to_thread(reap_leftovers, self.record.directory)
        self.record.write()
        self.record.watch()
        try:
            await self.launcher.start(self.loop)
            for pid in self.launcher.pids():
                self.record.add(pid)
        except BaseException:
            self.checkout.phase = Phase.CLOSED
            self.record.remove()
            raise
        n = self.config.min_size
        need = self.config.min_ready or n
        tasks = [self.sup.spawn(self.sup.start_worker(initial=True)) for _ in range(n)]
        failures: dict[str, str] = {}
        first: WorkerStartError | None = None
        pending: set[asyncio.Task[Any]] = set(tasks)
        try:
            while pending and self.checkout.ready_count() < need:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    exc = t.exception()
                    if isinstance(exc, WorkerStartError):
                        failures.update(exc.failures or {"?": str(exc)})
                        first = first or exc
                    elif exc is not None:
                        raise exc
                if len(failures) > n - need:
                    raise WorkerStartError(
                        f"{len(failures)} of {n} workers failed to start (need {need}); "
                        f"first cause: {first}",
                        failures,
                    ) from None  # its text already holds the first cause, traceback and all
            with self.checkout.lock:
                self.checkout.phase = Phase.RUNNING
            self.sup.ensure_capacity()
            # A worker that died right after its HELLO is being replaced: wait for that too.
            await self.wait_ready(need, self.config.start_timeout)
        except BaseException:
            for t in pending:
                t.cancel()
            await self.aclose(cancel_pending=True)
            raise
        self.sup.start_maintenance()

    async def wait_ready(self, n: int | None = None, timeout: float | None = None) -> None:
        """Until ``n`` (default: size) workers are ready. Raises TimeoutError, PoolBroken."""
        want = self.config.min_size if n is None else n

        async def until() -> None:
            while True:
                if self.checkout.reject is not None:
                    raise self.checkout.reject
                if self.checkout.ready_count() >= want:
                    return
                self.sup.ready_changed.clear()
                await self.sup.ready_changed.wait()

        await asyncio.wait_for(until(), timeout)

    async def aclose(self, *, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Drain (or fail) pending calls, stop every worker, leave no process behind.

        Concurrent calls share one close: the later ones wait for the first to finish."""
        if self._closing is None:
            self._closing = self.loop.create_task(self._aclose(cancel_pending, timeout))
        await asyncio.shield(self._closing)

    async def _aclose(self, cancel_pending: bool, timeout: float | None) -> None:
        if self.checkout.phase is Phase.CLOSED:
            return
        await self.sup.close(cancel_pending=cancel_pending, timeout=timeout)
        await self.launcher.close()
        _shm.remove_leftovers(self.run_tag)
        await asyncio.to_thread(self.record.remove)  # the watcher is reaped with a bound
        with self.checkout.lock:
            self.checkout.phase = Phase.CLOSED

    # --- introspection -------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        return self.checkout.snapshot()

    def check_invariants(self) -> None:
        """AssertionError if leases, the idle set and worker states disagree (for tests)."""
        self.checkout.check_invariants()

    def pids(self) -> list[int]:
        with self.checkout.lock:
            return [
                w.proc.pid
                for w in self.checkout.workers.values()
                if w.proc is not None and not w.proc.exited
            ]
