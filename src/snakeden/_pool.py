"""``Pool``: the asyncio front.

Each call runs in the caller's task: it takes a free worker itself (or queues FIFO), writes the
CALL frame, and awaits the reply future that the channel's reader callback resolves. Timeouts are a
loop timer that kills the worker; cancellation of the caller is re-raised untouched, and the
worker is either given back once its reply arrives or killed after ``cancel_grace``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NoReturn, Unpack

from snakeden import _commands, _host_calls, _mapping, _progress
from snakeden._async_sessions import AsyncSession
from snakeden._calls import UNSET as _UNSET
from snakeden._calls import Command
from snakeden._channel import Channel, ChannelLost, TakenBack, ident_begun
from snakeden._config import PoolOptions, make_config
from snakeden._core import PoolCore
from snakeden._errors import CallTimeout, PoolClosed, QueueTimeout
from snakeden._handle import Cause, WorkerHandle
from snakeden._protocol import (
    FEATURE_CANCEL,
    KIND_CALL,
    NO_REGION,
    Kind,
    encode_frame,
    encode_header,
)
from snakeden._sessions import Affinity, SessionRecord, check_affinity, session_ttl
from snakeden._stats import Outcome, PoolStats
from snakeden._streams import Stream
from snakeden._waiters import FREE, JOIN, QueuedCall

# The loop holds its tasks only weakly: without this, a pool its owner dropped while open would
# be garbage together with its guard, which then never closes it.
_GUARDS: set[asyncio.Task[None]] = set()


class Pool:
    """A pool of warm worker processes, for asyncio.

    ``target`` names the worker module (``"pkg.mod"``) or a class in it (``"pkg.mod:Model"``),
    or is ``None`` for a pool that only runs functions by reference. The keyword options (size,
    start method, timeouts, recycling, ...) are all optional and documented in one place:
    :class:`snakeden.PoolOptions`.
    """

    def __init__(self, target: str | None = None, **options: Unpack[PoolOptions]) -> None:
        refuse_in_host_script()
        self.config = make_config(target, options)
        self.config.validate()
        self._core: PoolCore | None = None
        self._closed_by_caller: asyncio.Future[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Pool:
        if self._core is not None:
            raise RuntimeError("the pool is already started")
        loop = asyncio.get_running_loop()
        self._core = PoolCore(self.config, loop, blocking=False)
        await self._core.start()
        self._closed_by_caller = loop.create_future()
        guard = loop.create_task(self._close_with_the_loop(), name="snakeden-pool-guard")
        _GUARDS.add(guard)
        guard.add_done_callback(_GUARDS.discard)
        return self

    async def _close_with_the_loop(self) -> None:
        """Close the pool if it is still open when the loop's tasks are cancelled.

        ``asyncio.run`` cancels every remaining task when its main coroutine returns, and runs
        the loop until they finish: a pool left open then is closed here, while its loop still
        runs, instead of leaving its workers running (the loop that watches them is gone).
        """
        assert self._closed_by_caller is not None and self._core is not None
        try:
            await self._closed_by_caller
        except asyncio.CancelledError:
            # Its callers were cancelled too: queued calls have no one to return to.
            await self._core.aclose(cancel_pending=True)
            raise

    async def __aenter__(self) -> Pool:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(cancel_pending=exc_info[0] is not None)

    def __enter__(self) -> NoReturn:
        raise TypeError(
            "snakeden.Pool is for asyncio: use 'async with snakeden.Pool(...)' in a coroutine; "
            "in threaded code use 'with snakeden.SyncPool(...)'"
        )

    def __exit__(self, *exc_info: object) -> NoReturn:
        raise TypeError("snakeden.Pool is for asyncio: use 'async with snakeden.Pool(...)'")

    async def close(self, *, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Drain in-flight and queued calls (or fail queued ones with ``PoolClosed`` when
        ``cancel_pending``), then stop every worker: SHUTDOWN, SIGTERM, SIGKILL on a timer.

        A pool still open when ``asyncio.run`` ends is closed then (``cancel_pending``)."""
        if self._closed_by_caller is not None and not self._closed_by_caller.done():
            self._closed_by_caller.set_result(None)
        if self._core is not None:
            await self._core.aclose(cancel_pending=cancel_pending, timeout=timeout)

    async def wait_ready(self, n: int | None = None, timeout: float | None = None) -> None:
        """Wait until ``n`` workers (default: ``size``) are ready."""
        await self._running().wait_ready(n, timeout)

    @classmethod
    def _sharing(cls, core: PoolCore) -> Pool:
        """A front on another front's core (``SyncPool`` routes calls to concurrent workers
        through it, on the pool's loop)."""
        front = cls.__new__(cls)
        front.config = core.config
        front._core = core
        front._closed_by_caller = None
        return front

    def _running(self) -> PoolCore:
        if self._core is None:
            raise PoolClosed("the pool is not started; use 'async with Pool(...)' or start()")
        return self._core

    # --- calls --------------------------------------------------------------------------------

    def call(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Run ``cmd(*args, **kwargs)`` on a worker and return its result.

        ``cmd`` is a command name or an importable module-level function (with
        ``serializer="pickle"`` also a bound method, ``functools.partial`` or callable object,
        sent pickled with each call); anything else raises :class:`NotAReference` here, before
        anything is sent. ``timeout`` (default:
        the pool's ``call_timeout``) bounds the run; past it the worker is killed and replaced
        and :class:`CallTimeout` raised. ``timeout`` is reserved: a command taking a keyword
        named ``timeout`` gets it through ``call_with(..., kwargs={"timeout": ...})``.

        A coroutine, as from ``async def``: ``call_with``'s own, so that each call makes one
        coroutine object, not two (with thousands in flight, the garbage collector's work
        grows with every object alive).
        """
        return self.call_with(cmd, args, kwargs, timeout=timeout)

    async def call_with(
        self,
        cmd: Command,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = _UNSET,
        batch: bool = False,
        session: SessionRecord | None = None,
    ) -> Any:
        if type(cmd) is not str:
            cmd, args = _commands.sendable(
                cmd, args, pickle=self.config.serializer == "pickle", batch=batch
            )
        core = self._running()
        cfg = self.config
        name, flags, body = core.encode_call(cmd, args, kwargs, batch=batch)
        timeout = cfg.call_timeout if timeout is _UNSET else timeout
        plain = type(body) is bytes and core.tracing is None and session is None
        # A call with a timeout (its own or the queue's) never waits behind another in a
        # worker's pipe (its time would run there), nor one from a host function (it could wait
        # behind the call waiting on it). Without pipelining no worker takes calls behind
        # others: the mode does not matter.
        joins = (
            timeout is None
            and cfg.pipeline > 1
            and cfg.queue_timeout is None
            and _host_calls.inside() is None
        )
        mode = JOIN if joins else FREE
        attempt = 0
        again = False  # sent again (taken back, or its worker died before it began)
        while True:
            queued = None
            if plain and timeout is None and not again:
                # Queued, it is sent by the step that frees a worker (QueuedCall).
                got, grow = core.checkout.acquire(core.queued_call, mode, args=(name, flags, body))
                if isinstance(got, WorkerHandle):
                    w, waited = got, 0.0
                else:
                    assert isinstance(got, QueuedCall)
                    queued = got
                    if grow:
                        core.sup.call_soon(core.sup.grow)
            else:
                w, waited = await core.checkout_async(cfg.queue_timeout, session, mode, again)
            timer = None
            if queued is None:
                t1 = time.perf_counter()
                w.current_command = name  # for the live view (snakeden top)
                channel = w.channel
                assert channel is not None
                ident = channel.next_id()
                behind = w.inflight > 1
                if plain:
                    # Behind another call (NO_REGION): whose reply may hold the worker's region.
                    f = flags | NO_REGION if behind else flags
                    data = encode_header(KIND_CALL, ident, len(body), f) + body
                else:  # shared memory, tracing or a session: core.call_frame says it once
                    data = core.call_frame(w, name, ident, flags, body, waited, attempt, session)
                fut = channel.expect(ident)
                if behind and w.pipelined:
                    channel.send(data, ident, takeable=True)
                    core.sweeper.watch()
                else:
                    channel.send(data, ident)
                if timeout is not None:
                    timer = core.loop.call_later(timeout, _expire, fut)
            else:
                t0 = time.perf_counter()
                fut = queued.fut
                timer = core.queue_timer(queued, cfg.queue_timeout)
            try:
                try:
                    frame = await fut
                finally:
                    if queued is not None:
                        if timer is not None:
                            timer.cancel()
                        if queued.ident:  # sent: from here on, as a call sent above
                            w, ident, t1 = queued.lease()
                            waited = t1 - t0
            except QueueTimeout:  # never sent (queued.fail ignores the timer once it is)
                assert queued is not None
                raise core.gave_up(queued, t0) from None
            except asyncio.CancelledError:
                if timer is not None:
                    timer.cancel()
                if queued is not None and not queued.ident:
                    core.gave_up(queued)  # never sent: only its place in the queue to give up
                    raise
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    # The reply was already in: the worker is free, only the caller went away.
                    core.release(w, "cancelled", waited, time.perf_counter() - t1)
                else:
                    self._abandon(w, ident, waited, time.perf_counter() - t1)
                raise
            except _Expired:
                if w.depth > 1 and not w.pipelined and FEATURE_CANCEL in w.features:
                    # Other calls share this worker: stop this one only (the worker is killed
                    # only if the command ignores the CANCEL past cancel_grace).
                    self._abandon(w, ident, waited, time.perf_counter() - t1, "timeout")
                    raise CallTimeout(
                        f"{name!r} did not finish within {timeout}s; it was cancelled in worker "
                        f"{w.id} (pid {w.pid}), which serves its other calls on"
                    ) from None
                assert channel is not None  # a call with a timeout is never a QueuedCall
                channel.forget(ident)
                raise core.call_timed_out(w, name, timeout, waited, t1) from None
            except TakenBack:
                # It waited behind a long call and a worker came free: it runs there instead.
                if timer is not None:
                    timer.cancel()
                core.sup.act(core.checkout.resend(w, taken_back=True))
                again = True
                continue
            except ChannelLost as lost:
                if timer is not None:
                    timer.cancel()
                strict = session is not None and session.strict
                if core.call_lost(w, lost, waited, t1, attempt, may_retry=not strict, again=True):
                    attempt += 1
                    again = True
                    continue  # it never reached the worker: another one runs it
                if strict and lost.unsent:
                    assert session is not None
                    raise core.session_lost(session, w) from None
                await core.wait_gone(w)  # for the exit status and the last stderr lines
                raise core.crash_error(w, lost, name) from None
            if timer is not None:
                timer.cancel()
            return core.finish_call(w, frame, name, batch=batch, waited=waited, t1=t1)

    def stream(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> Stream:
        """Run a generator (or async generator) command and get its items as they come::

            async for token in pool.stream("generate", prompt):
                ...

        The returned :class:`snakeden.Stream` is an async iterator and async context manager;
        ``aclose()``, leaving ``async with``, dropping it, cancelling the reader, or
        ``timeout`` (the whole stream's, default ``call_timeout``: :class:`CallTimeout`) stop
        the generator in the worker. The worker runs at most ``stream_window`` items ahead of
        the reader. An exception in the generator is raised where it happened, after the
        items before it; a worker crash raises :class:`WorkerCrashed`; a worker that cannot
        stream (its HELLO lacks ``"stream"``), :class:`FeatureNotSupported`."""
        return self._stream(cmd, args, kwargs, timeout, None)

    def _stream(
        self,
        cmd: Command,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        session: SessionRecord | None,
    ) -> Stream:
        cmd, args = _commands.sendable(
            cmd, args, pickle=self.config.serializer == "pickle", batch=False
        )
        core = self._running()
        request = core.encode_call(cmd, args, kwargs, batch=False)
        timeout = self.config.call_timeout if timeout is _UNSET else timeout
        return Stream(core, request, timeout, session)

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Make ``fn`` (sync or ``async def``) callable from worker code as
        ``snakeden.context().call_host(name, ...)`` (like the ``host_functions`` option)."""
        assert self.config.host_functions is not None  # make_config's dict
        _host_calls.register(self.config.host_functions, name, fn)

    def _abandon(
        self,
        w: WorkerHandle,
        ident: int,
        waited: float,
        ran: float,
        outcome: Outcome = "cancelled",
    ) -> None:
        """The caller was cancelled mid-call: tell the worker, reclaim it when it answers."""
        core = self._running()
        channel = w.channel
        assert channel is not None
        if channel.lost is not None:
            core.worker_failed(w, Cause.CRASHED)  # never hand a dead worker to anyone
            core.release(w, outcome, waited, ran)
            return
        # A reply that came in the same loop turn as the cancellation is claimed here at once.
        drain = channel.expect(ident)
        kill: asyncio.TimerHandle | None = None
        grace = self.config.cancel_grace
        seen_begun = False

        def overdue() -> None:
            # Waiting in a pipelined worker's pipe, the call is no reason to kill it: the call
            # it waits behind is someone else's. Its grace runs from when it begins.
            nonlocal kill, seen_begun
            began = seen_begun or not _waiting(channel, ident)
            if began and seen_begun:
                core.worker_failed(w, Cause.CANCEL_IGNORED)
            else:
                seen_begun = began
                kill = core.loop.call_later(grace, overdue)

        if not drain.done():
            if w.pipelined and channel.begun is not None and _waiting(channel, ident):
                channel.ask_skip(ident)  # not begun: the worker skips it
                kill = core.loop.call_later(grace, overdue)
            else:
                kill = core.loop.call_later(grace, core.worker_failed, w, Cause.CANCEL_IGNORED)
            channel.notify(encode_frame(Kind.CANCEL, ident))  # begun meanwhile: it may stop

        def done(f: asyncio.Future[Any]) -> None:
            if kill is not None:
                kill.cancel()
            if f.cancelled() or f.exception() is not None:
                core.worker_failed(w, Cause.CRASHED)
            core.release(w, outcome, waited, ran)

        drain.add_done_callback(done)

    async def map(
        self,
        cmd: Command,
        iterable: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = _UNSET,
        star: bool = False,
        progress: _progress.Progress = False,
    ) -> list[Any]:
        """``[cmd(x) for x in iterable]`` across the pool, results in input order.

        Items go in chunks, one frame per chunk, several chunks in flight per worker.
        ``chunksize=None`` (the default) picks it: ``ceil(items / (4 * size))``, at most 4096;
        ``chunksize=1`` makes one call per item; below 1 is a ``ValueError``, as for
        ``ProcessPoolExecutor.map``. ``timeout`` bounds each chunk's run; a crash or timeout
        fails the chunk that was running, and the chunks queued behind it run on another
        worker. ``star=True`` unpacks each item as the argument tuple. The first failed item
        (in input order) raises, once every chunk has run. ``progress=True`` draws a progress
        bar on stderr when it is a terminal; a callable gets ``(done, total)`` as items finish.
        """
        return await self._map(cmd, iterable, chunksize, timeout, star, progress, None)

    async def _map(  # noqa: PLR0917 - map's arguments, passed on as they are
        self,
        cmd: Command,
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        star: bool,
        progress: _progress.Progress,
        session: SessionRecord | None,
    ) -> list[Any]:
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, not {chunksize!r}")
        pickle = self.config.serializer == "pickle"
        # Refused once, here, rather than by every one of the calls.
        _commands.sendable(cmd, (), pickle=pickle, batch=False)
        core = self._running()
        cfg = self.config
        # Lists: what a batch's arguments go as (an exact list needs no conversion).
        items = [list(x) for x in iterable] if star else list(iterable)
        if chunksize is None:
            chunksize = _mapping.auto_chunksize(len(items), cfg.min_size)
        bar = _progress.start(progress, len(items)) if progress else None
        try:
            if (
                chunksize == 1
                or session is not None  # each chunk a call of the session, on its worker
                or core.tracing is not None
                or _commands.by_value(cmd, pickle)
            ):
                if not star:
                    items = [[x] for x in items]
                return await self._map_calls(cmd, items, chunksize, timeout, bar, session=session)
            job = _mapping.MapJob(core, cmd, items, chunksize, bar, flat=not star)
            lanes = max(1, min(cfg.upper_size, len(job.todo)))
            call_timeout = cfg.call_timeout if timeout is _UNSET else timeout
            return await _mapping.run_async(job, call_timeout, cfg.queue_timeout, lanes)
        finally:
            if bar is not None:
                bar.close()

    async def _map_calls(
        self,
        cmd: Command,
        items: list[list[Any]],
        chunksize: int,
        timeout: float | None,
        bar: _progress.Tracker | None,
        *,
        session: SessionRecord | None,
    ) -> list[Any]:
        """``map`` as one call per item, or per chunk when traced (each call its own span) or
        in a session."""
        if chunksize == 1:
            coros = [self.call_with(cmd, a, None, timeout=timeout, session=session) for a in items]
            if bar is not None:
                coros = bar.track(coros, [1] * len(coros))
            return list(await asyncio.gather(*coros))
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        coros = [
            self.call_with(cmd, c, None, timeout=timeout, batch=True, session=session)
            for c in chunks
        ]
        if bar is not None:
            coros = bar.track(coros, [len(c) for c in chunks])
        parts = await asyncio.gather(*coros)
        return [r for part in parts for r in part]

    def session(self, *, affinity: Affinity = "wait", ttl: float | None = _UNSET) -> AsyncSession:
        """A session: calls that share state kept in one worker (``snakeden.context().session``
        there). Use it as ``async with pool.session() as s: await s.call(...)``.

        ``affinity`` says what a call does when that worker is busy: ``"wait"`` for it,
        ``"fail"`` at once with :class:`SessionBusy`, or ``"hint"``: run on another worker (the
        state is then a per-worker cache). ``ttl`` (default: the pool's ``session_ttl``): idle
        seconds after which the session expires and its state is dropped.
        """
        core = self._running()
        ttl = self.config.session_ttl if ttl is _UNSET else ttl
        return AsyncSession(self, core, check_affinity(affinity), session_ttl(ttl))

    # --- introspection ------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """An immutable snapshot of workers, queue, counters and latency percentiles."""
        return self._running().stats()

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes."""
        return self._core.pids() if self._core is not None else []

    @property
    def run_tag(self) -> str:
        return self._running().run_tag

    def __repr__(self) -> str:
        return describe(self, self._core)


def refuse_in_host_script() -> None:
    """A worker runs the host's script to find a function defined in it; a pool created by the
    script's unguarded top level would start workers of its own there, and so on."""
    if _commands.running_host_script():
        raise RuntimeError(
            "a snakeden worker is running this script to find a function defined in it, and "
            "the script creates a pool as it is imported. Create pools under "
            "'if __name__ == \"__main__\":' (the worker runs the script under another name), "
            "or move the function to a module of its own"
        )


def describe(front: object, core: PoolCore | None) -> str:
    name = type(front).__name__
    if core is None:
        return f"<{name} not started>"
    s = core.stats()
    return (
        f"<{name} {core.config.target or '(by reference)'} {s.state} workers={s.workers} "
        f"ready={s.ready} busy={s.busy} starting={s.starting} queued={s.queued} "
        f"ok={s.calls_ok} failed={s.calls_failed} timed_out={s.calls_timed_out} "
        f"crashed={s.calls_crashed} restarts={s.restarts} launcher={core.launcher.name}>"
    )


class _Expired(Exception):
    pass


def _waiting(channel: Channel, ident: int) -> bool:
    """Whether call ``ident`` (sent on ``channel``, which notes what its worker begins) is still
    waiting behind another: ids of one channel increase, modulo 2**32."""
    assert channel.begun is not None
    return 0 < (ident - ident_begun(channel.begun)) % (1 << 32) < (1 << 31)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())
