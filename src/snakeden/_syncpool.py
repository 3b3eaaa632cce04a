"""``SyncPool``: the thread front, and a ``concurrent.futures.Executor``.

``call()`` runs entirely on the calling thread: it leases a worker, writes the CALL frame and
blocks on the reply with ``poll()`` for the deadline, so a synchronous call pays for no event-loop
hop. Supervision (start, handshake, exit watching, replacement, health, output capture) runs on a
private event-loop thread, never on the call path. ``submit()`` hands calls to a small set of
dispatcher threads (``_dispatch_sync``; one per possible worker, since each leases one worker at a
time), which keep several queued calls in their worker's pipe (``_submit_sync``).

Like ``concurrent.futures``' executors, a pool still open when the interpreter exits first runs
every call submitted to it, then stops its workers (a ``threading`` exit hook, which runs before
non-daemon threads are joined, while the pool's daemon threads still work), and ``submit()``
refuses new calls from then on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, Unpack

from snakeden import _commands, _host_calls, _mapping, _mapping_sync, _progress, _submit_sync
from snakeden._calls import UNSET as _UNSET
from snakeden._calls import Command
from snakeden._channel import ChannelLost
from snakeden._config import PoolOptions, make_config
from snakeden._core import PoolCore
from snakeden._dispatch_sync import Dispatchers, DispatchQueue
from snakeden._errors import PoolClosed, PoolSaturated
from snakeden._handle import Cause
from snakeden._pool import Pool, describe, refuse_in_host_script
from snakeden._protocol import KIND_CALL, encode_header
from snakeden._sessions import Affinity, SessionRecord, check_affinity, session_ttl
from snakeden._stats import PoolStats
from snakeden._sync_sessions import Session
from snakeden._sync_streams import BridgedStream, SyncStream

_Item = _submit_sync.Item

# Pools not yet shut down, for the exit hook. Strong references on purpose: an open pool owns
# processes and queued calls, so it is not garbage until it is shut down.
_open_pools: set[SyncPool] = set()
_interpreter_exiting = False
_open_pools_lock = threading.Lock()

# ProcessPoolExecutor's constructor argument names that mean something else here.
_EXECUTOR_SPELLINGS = {
    "max_tasks_per_child": "max_calls",
    "mp_context": "start_method ('fork' or 'spawn')",
    "initializer": "a class target ('module:Class') whose setup() runs once in each worker",
    "initargs": "a class target ('module:Class') whose setup() runs once in each worker",
}


def _settle(fut: cf.Future[None]) -> Callable[[BaseException | None], None]:
    """A map lane's way to report that it ended (with the error that ended it, if any)."""

    def done(exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    return done


def _finish_open_pools() -> None:
    """At interpreter exit: run what was submitted, then stop the workers, pool by pool."""
    global _interpreter_exiting
    with _open_pools_lock:
        _interpreter_exiting = True
        pools = list(_open_pools)
    for pool in pools:
        pool.shutdown(wait=True)


def _forget_pools_in_child() -> None:
    # A forked child has none of its parent's threads: shutting its parent's pools down at its
    # own exit would wait for them for ever, and the workers are not its own anyway.
    global _open_pools_lock
    _open_pools_lock = threading.Lock()
    _open_pools.clear()


# The hook concurrent.futures uses: it runs before non-daemon threads are joined (atexit hooks
# would run after them) and works in subinterpreters.
threading._register_atexit(_finish_open_pools)  # type: ignore[attr-defined]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


class SyncPool(Dispatchers, cf.Executor):
    """A pool of warm worker processes for threaded code; safe from many threads at once.

    Takes the same arguments as :class:`snakeden.Pool`, options documented in
    :class:`snakeden.PoolOptions`, and ``max_workers`` as another name for ``size``, as
    ``ProcessPoolExecutor`` spells it. The pool is started (all workers ready, or ``min_ready``
    of them) when the constructor returns; a worker that cannot start raises
    :class:`WorkerStartError` here.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        max_workers: int | None = _UNSET,
        **options: Unpack[PoolOptions],
    ) -> None:
        refuse_in_host_script()
        if target is not None and not isinstance(target, str):
            raise TypeError(
                f"SyncPool's first argument is the worker module ('pkg.mod' or 'pkg.mod:Class') "
                f"or None, not {target!r}; for ProcessPoolExecutor({target!r}) write "
                f"SyncPool(max_workers={target!r})"
            )
        for name in options:
            if name in _EXECUTOR_SPELLINGS:
                raise TypeError(
                    f"SyncPool takes no {name!r} (a ProcessPoolExecutor argument); use "
                    f"{_EXECUTOR_SPELLINGS[name]}"
                )
        if max_workers is not _UNSET:
            if "size" in options:
                raise TypeError("pass size or max_workers (another name for it), not both")
            if max_workers is not None and max_workers < 1:
                raise ValueError("max_workers must be greater than 0")
            options["size"] = max_workers or 0  # None: one per CPU, as for the executors
        self.config = make_config(target, options)
        self.config.validate()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="snakeden-supervisor", daemon=True
        )
        self._thread.start()
        self._core = PoolCore(self.config, self._loop, blocking=True)
        self._aio = Pool._sharing(self._core)
        self._queue = DispatchQueue()
        self._dispatchers: list[threading.Thread] = []
        self._serving: set[_submit_sync.Lane] = set()  # lanes of submit() serving now
        self._submitted = 0  # submitted and not yet picked up by a dispatcher
        self._lock = threading.Lock()
        self._shutdown = False
        self._finished = threading.Event()
        try:
            self._run(self._core.start())
        except BaseException:
            self._stop_loop()
            raise
        # submit() pipelines (see _submit_sync) unless calls have a timeout (its time would
        # run while waiting behind another) or are traced, or workers share their channel.
        cfg = self.config
        self._lanes = (
            cfg.pipeline > 1
            and cfg.call_timeout is None
            and cfg.queue_timeout is None
            and self._core.tracing is None
            and not self._core.checkout.shared
        )
        with _open_pools_lock:
            _open_pools.add(self)

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- calls --------------------------------------------------------------------------------

    def call(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> Any:
        """Run ``cmd(*args, **kwargs)`` on a worker from this thread and return the result.

        Same semantics as :meth:`snakeden.Pool.call`, including the reserved ``timeout``.
        """
        return self.call_with(cmd, args, kwargs, timeout=timeout)

    def call_with(
        self,
        cmd: Command,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = _UNSET,
        batch: bool = False,
        queue_timeout: float | None = _UNSET,
        session: SessionRecord | None = None,
    ) -> Any:
        core = self._core
        if core.checkout.shared:
            # Workers that take several calls at once share their channel, which the pool's
            # loop reads: the call runs there, as the asyncio front runs it.
            coro = self._aio.call_with(
                cmd, args, kwargs, timeout=timeout, batch=batch, session=session
            )
            return self._run(_host_calls.as_nested(coro, _host_calls.inside()))
        if type(cmd) is not str:
            cmd, args = _commands.sendable(
                cmd, args, pickle=self.config.serializer == "pickle", batch=batch
            )
        cfg = self.config
        name, flags, body = core.encode_call(cmd, args, kwargs, batch=batch)
        timeout = cfg.call_timeout if timeout is _UNSET else timeout
        attempt = 0
        while True:
            w, waited = core.checkout_blocking(
                cfg.queue_timeout if queue_timeout is _UNSET else queue_timeout,
                session,
                attempt > 0,
            )
            t1 = time.perf_counter()
            w.current_command = name  # for the live view (snakeden top)
            channel = w.channel
            assert channel is not None
            ident = channel.next_id()
            deadline = None if timeout is None else time.monotonic() + timeout
            if type(body) is bytes and core.tracing is None and session is None:
                data = encode_header(KIND_CALL, ident, len(body), flags) + body
            else:  # shared memory, tracing or a session: core.call_frame says it once
                data = core.call_frame(w, name, ident, flags, body, waited, attempt, session)
            try:
                frame = channel.request_blocking(ident, data, deadline)
            except TimeoutError:
                raise core.call_timed_out(w, name, timeout, waited, t1) from None
            except ChannelLost as lost:
                strict = session is not None and session.strict
                if core.call_lost(w, lost, waited, t1, attempt, may_retry=not strict, again=True):
                    attempt += 1
                    continue  # it never reached the worker: another one runs it
                if strict and lost.unsent:
                    assert session is not None
                    raise core.session_lost(session, w) from None
                w.gone.wait(5.0)  # for the exit status and the last stderr lines
                raise core.crash_error(w, lost, name) from None
            except BaseException:
                # Interrupted mid-call (e.g. KeyboardInterrupt): the worker's state is unknown.
                core.worker_failed(w, Cause.INTERRUPTED)
                core.release(w, None)
                raise
            return core.finish_call(w, frame, name, batch=batch, waited=waited, t1=t1)

    def stream(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> SyncStream | BridgedStream:
        """Run a generator command and iterate over its items as they come, from this thread.

        Same semantics as :meth:`snakeden.Pool.stream`; the iterator's ``close()`` (or leaving
        ``with``, or dropping it) stops the generator in the worker."""
        return self._stream(cmd, args, kwargs, timeout, None)

    def _stream(
        self,
        cmd: Command,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        session: SessionRecord | None,
    ) -> SyncStream | BridgedStream:
        core = self._core
        if core.checkout.shared:
            return BridgedStream(self._aio._stream(cmd, args, kwargs, timeout, session), self._loop)
        cmd, args = _commands.sendable(
            cmd, args, pickle=self.config.serializer == "pickle", batch=False
        )
        request = core.encode_call(cmd, args, kwargs, batch=False)
        timeout = self.config.call_timeout if timeout is _UNSET else timeout
        return SyncStream(core, request, timeout, session)

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Same as :meth:`snakeden.Pool.register`."""
        self._aio.register(name, fn)

    # --- Executor -----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; returns a ``concurrent.futures.Future``.

        All keyword arguments go to ``fn``. A future cancelled while queued is never sent. A
        function that cannot reach a worker (see :meth:`snakeden.Pool.call`) raises
        :class:`NotAReference` here, not from ``result()``.
        """
        return self._submit(fn, args, kwargs, batch=False)

    def _submit(
        self,
        cmd: Command,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        batch: bool,
        session: SessionRecord | None = None,
    ) -> cf.Future[Any]:
        cmd, args = _commands.sendable(
            cmd, args, pickle=self.config.serializer == "pickle", batch=batch
        )
        fut: cf.Future[Any] = cf.Future()
        self._enqueue((fut, cmd, args, kwargs, batch, time.monotonic(), session, 0))
        return fut

    def _enqueue(self, entry: _Item | _mapping_sync.BlockingLane) -> None:
        with self._lock:
            if _interpreter_exiting:
                raise PoolClosed("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise PoolClosed("cannot schedule new calls after shutdown")
            if self._submitted >= self.config.max_queue:
                raise PoolSaturated(
                    f"{self._submitted} submitted calls are already queued (max_queue="
                    f"{self.config.max_queue})"
                )
            self._submitted += 1
            # A thread per queued call that no idle dispatcher waits for (a dispatcher blocks
            # on one worker at a time): a call queued while the others run long ones still
            # reaches an idle worker at once.
            if (
                len(self._dispatchers) < self.config.upper_size
                and self._submitted > self._queue.waiting
            ):
                t = threading.Thread(
                    target=self._dispatch,
                    name=f"snakeden-dispatch-{len(self._dispatchers)}",
                    daemon=True,
                )
                self._dispatchers.append(t)
                t.start()
            # Under the lock: a shutdown's sentinels must come after every accepted call.
            self._queue.put(entry)

    def _run_item(self, item: _Item) -> None:
        fut, cmd, args, kwargs, batch, _queued_at, session, _attempts = item
        runs, remaining = self._started(item)
        if not runs:
            return
        try:
            if session is None:
                result = self.call_with(cmd, args, kwargs, batch=batch, queue_timeout=remaining)
            else:
                result = Session.run(self, session, cmd, args, kwargs, batch, remaining)
        except BaseException as exc:
            fut.set_exception(exc)
            # The traceback holds this frame, and the frame the future: break the cycle, so
            # that dropping the future frees it (and the arguments) without waiting for the
            # garbage collector.
            del item, fut
        else:
            fut.set_result(result)

    def map(
        self,
        fn: Callable[..., Any] | str,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Progress = False,
    ) -> Iterator[Any]:
        """Like ``Executor.map``, in chunks as :meth:`snakeden.Pool.map` sends them
        (``chunksize=None`` picks the size, 1 is one call per item, below 1 a ``ValueError``).
        ``timeout`` bounds the whole map, as for the executors. ``progress=True`` draws a
        progress bar on stderr when it is a terminal; a callable gets ``(done, total)``."""
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, not {chunksize!r}")
        if chunksize == 1 and not progress:
            return super().map(fn, *iterables, timeout=timeout)  # type: ignore[arg-type]
        pickle = self.config.serializer == "pickle"
        _commands.sendable(fn, (), pickle=pickle, batch=False)
        flat = len(iterables) == 1
        items = list(iterables[0]) if flat else list(map(list, zip(*iterables, strict=False)))
        if chunksize is None:
            chunksize = _mapping.auto_chunksize(len(items), self.config.min_size)
        if chunksize == 1 or self._core.tracing is not None or _commands.by_value(fn, pickle):
            if flat:
                items = [[x] for x in items]
            return self._map_calls(fn, items, timeout, chunksize, progress)
        bar = _progress.start(progress, len(items))
        job = _mapping.MapJob(self._core, fn, items, chunksize, bar, flat=flat)
        lanes: list[tuple[_mapping_sync.BlockingLane, cf.Future[None]]] = []
        for _ in range(max(1, min(self.config.upper_size, len(job.todo)))):
            fut: cf.Future[None] = cf.Future()
            lane = _mapping_sync.BlockingLane(
                job, self.config.call_timeout, self.config.queue_timeout, _settle(fut)
            )
            self._enqueue(lane)
            lanes.append((lane, fut))
        end = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[list[Any]]:
            try:
                for _lane, fut in lanes:
                    fut.result(None if end is None else end - time.monotonic())
                done, error = job.each()
                yield done
                if error is not None:
                    raise error
            finally:
                for lane, _fut in lanes:
                    lane.cancelled = True
                if bar is not None:
                    bar.close()

        # The caller's iterator yields the items from C (a generator resumed per item costs
        # a tenth of a trivial map item); the generator waits first and raises last.
        return itertools.chain.from_iterable(results())

    def _map_calls(
        self,
        fn: Callable[..., Any] | str,
        items: list[list[Any]],
        timeout: float | None,
        chunksize: int,
        progress: _progress.Progress,
    ) -> Iterator[Any]:
        """``map`` as one call per item, or per chunk when traced (each call its own span)."""
        if chunksize == 1:
            futs = [self._submit(fn, tuple(args), {}, batch=False) for args in items]
        else:
            futs = [
                self._submit(fn, tuple(items[i : i + chunksize]), {}, batch=True)
                for i in range(0, len(items), chunksize)
            ]
        bar = _progress.start(progress, len(items))
        if bar is not None:
            bar.watch(
                futs, [min(chunksize, len(items) - i) for i in range(0, len(items), chunksize)]
            )
        end = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            try:
                for f in futs:
                    left = None if end is None else end - time.monotonic()
                    if chunksize == 1:
                        yield f.result(left)
                    else:
                        yield from f.result(left)
            finally:
                for f in futs:
                    f.cancel()
                if bar is not None:
                    bar.close()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls, finish (or cancel) queued ones, stop every worker.

        With ``wait=False`` this happens in the background; the interpreter still waits for it
        at exit, so calls submitted before are not lost."""
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
        if cancel_futures:
            running: list[_Item] = []  # given back by a lane: they run, as begun calls do
            while True:
                try:
                    item = self._queue.get_nowait()
                except IndexError:
                    break
                if item is None:
                    self._queue.put_front([None])  # a sentinel of an earlier shutdown: keep it
                    break
                if isinstance(item, _mapping_sync.BlockingLane):
                    item.cancel()
                elif not item[0].cancel():
                    running.append(item)
                    continue
                with self._lock:
                    self._submitted -= 1
            if running:
                self._queue.put_front(running)
        if not first:
            if wait:
                self._finished.wait()
            return
        if wait:
            self._finish(cancel_futures)
        else:
            threading.Thread(
                target=self._finish, args=(cancel_futures,), name="snakeden-shutdown", daemon=True
            ).start()

    def _finish(self, cancel_pending: bool) -> None:
        try:
            for _ in self._dispatchers:
                self._queue.put(None)  # after every queued call: those run first
            for t in self._dispatchers:
                t.join()
            with contextlib.suppress(RuntimeError):
                self._run(self._core.aclose(cancel_pending=cancel_pending))
            self._stop_loop()
        finally:
            with _open_pools_lock:
                _open_pools.discard(self)
            self._finished.set()

    def close(self, *, cancel_pending: bool = False) -> None:
        """Same as ``shutdown(wait=True, cancel_futures=cancel_pending)``."""
        self.shutdown(wait=True, cancel_futures=cancel_pending)

    def __aenter__(self) -> NoReturn:
        # The constructor already started the workers, and no __aexit__ follows a failed enter.
        self.shutdown(wait=False)
        raise TypeError(
            "snakeden.SyncPool is for threaded code: use 'with snakeden.SyncPool(...)'; in a "
            "coroutine use 'async with snakeden.Pool(...)', which never blocks the event loop"
        )

    def __aexit__(self, *exc_info: object) -> NoReturn:
        raise TypeError("snakeden.SyncPool is for threaded code: use 'with snakeden.SyncPool(...)'")

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def session(self, *, affinity: Affinity = "wait", ttl: float | None = _UNSET) -> Session:
        """A session: calls that share state kept in one worker; ``with pool.session() as s:
        s.call(...)``. ``affinity`` and ``ttl`` as for :meth:`snakeden.Pool.session`."""
        ttl = self.config.session_ttl if ttl is _UNSET else ttl
        return Session(self, check_affinity(affinity), session_ttl(ttl))

    # --- introspection ------------------------------------------------------------------------

    def wait_ready(self, n: int | None = None, timeout: float | None = None) -> None:
        """Block until ``n`` workers (default: ``size``) are ready."""
        self._run(self._core.wait_ready(n, timeout))

    def stats(self) -> PoolStats:
        return self._core.stats()

    def worker_pids(self) -> list[int]:
        return self._core.pids()

    @property
    def run_tag(self) -> str:
        return self._core.run_tag

    def __repr__(self) -> str:
        return describe(self, self._core)
