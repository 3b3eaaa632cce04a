"""The pool's state and lifecycle, shared by the asyncio ``Pool`` and the thread ``SyncPool``.

Data flow::

    caller (task or thread)                     PoolCore (state under one lock)
    ----------------------                      --------------------------------
    encode call (fails here if unserialisable)
    acquire() ------------------------------->  idle worker? -> lease it to the caller
                                                 else FIFO waiter (bounded by max_queue)
    write CALL frame, read reply  <---- channel ---->  worker process (python -m snakeden.worker)
    finish(worker, outcome) ----------------->  counters; hand worker to next waiter or idle

    supervisor (tasks on the core's loop): spawn / handshake / watch exits / replace /
    health pings / recycling / shrink / shutdown. Never on the call path.

State changes happen in plain synchronous steps under ``self.lock`` (as httpcore's pool does),
and I/O happens afterwards, outside it. No manager task or thread sits between a caller and a
worker: the caller takes the worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from snakeden import _shm
from snakeden._calls import Command, decode_reply, encode_call, unpack_batch
from snakeden._channel import Channel, ChannelLost
from snakeden._config import PoolConfig
from snakeden._errors import (
    PoolBroken,
    PoolClosed,
    PoolSaturated,
    ProtocolError,
    QueueTimeout,
    WorkerCrashed,
    WorkerStartError,
    describe_exit,
)
from snakeden._events import EventHub
from snakeden._output import OutputTail
from snakeden._process import Launcher, LaunchSpec, SpawnLauncher, WorkerProcess
from snakeden._protocol import (
    PROTOCOL_VERSION,
    Frame,
    Kind,
    ProtocolViolation,
    decode_body,
    encode_frame,
)
from snakeden._reaper import RunRecord, reap_leftovers
from snakeden._stats import Counters, Percentiles, PoolStats

log = logging.getLogger("snakeden")


class WState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"  # leased: to a caller, or to the supervisor for a health check
    STOPPING = "stopping"  # out of service, not leased: retiring or failed, exit pending
    DEAD = "dead"


_ids = itertools.count(1)


class WorkerHandle:
    """The host's record of one worker. Mutated only under the core's lock or on its loop."""

    def __init__(self, worker_id: str, born: float, max_calls: int | None) -> None:
        self.id = worker_id
        self.state = WState.STARTING
        self.proc: WorkerProcess | None = None
        self.channel: Channel | None = None
        self.stdout: OutputTail | None = None
        self.stderr: OutputTail | None = None
        self.born = born
        self.ready_at: float | None = None
        self.last_used = born
        self.calls = 0
        self.inflight = 0  # leases held: calls sent and not answered (>1 only with pipelining)
        self.max_calls = max_calls
        self.retiring = False  # stop using once a replacement is ready
        self.must_retire = False  # stop using now (limit reached)
        self.replacing: WorkerHandle | None = None
        self.replacement_scheduled = False
        self.next_memory_check = 0.0
        self.commands: tuple[str, ...] = ()
        self.death_cause: str | None = None
        self.close_on_release = False  # exited while leased: the lease holder closes the fds
        self.gone = threading.Event()  # exit status known and output drained
        self.gone_waiters: list[asyncio.Future[None]] = []

    @property
    def in_service(self) -> bool:
        """Ready or busy, and not failed, retiring or being stopped."""
        return (
            self.state in (WState.IDLE, WState.BUSY)
            and self.death_cause is None
            and not self.must_retire
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __repr__(self) -> str:
        return f"<Worker {self.id} pid={self.pid} {self.state.value} calls={self.calls}>"

    def stderr_tail(self, n: int = 25) -> list[str]:
        return list(self.stderr.lines)[-n:] if self.stderr else []


class AsyncWaiter:
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[WorkerHandle]) -> None:
        self.fut = fut

    def give(self, w: WorkerHandle) -> bool:
        if self.fut.done():
            return False
        self.fut.set_result(w)
        return True

    def fail(self, exc: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class ThreadWaiter:
    __slots__ = ("error", "event", "gave_up", "worker")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.worker: WorkerHandle | None = None
        self.error: BaseException | None = None
        self.gave_up = False

    def give(self, w: WorkerHandle) -> bool:
        if self.gave_up:
            return False
        self.worker = w
        self.event.set()
        return True

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.event.set()


Waiter = AsyncWaiter | ThreadWaiter


class PoolCore:
    """State, checkout and supervision. ``blocking=True`` for the thread front's channels."""

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
        self.blocking = blocking
        self.clock = config.clock
        self.lock = threading.Lock()
        self.workers: dict[str, WorkerHandle] = {}
        self.idle: deque[WorkerHandle] = deque()
        self.waiters: deque[Waiter] = deque()
        self.leased = 0
        self.counters = Counters()
        self.state = "new"
        self.reject: BaseException | None = None  # set when closed or broken
        self.run_tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.events = EventHub(config.on_event, self.clock)
        self.pickle = config.serializer == "pickle"
        self.shm = (
            (config.shm_threshold, self.run_tag) if config.shm_threshold is not None else None
        )
        # What every worker's environment gets on top of the host's.
        self.worker_env = dict(config.env)
        if config.shm_threshold is not None:
            self.worker_env["SNAKEDEN_SHM_THRESHOLD"] = str(config.shm_threshold)
        self.launcher: Launcher = make_launcher(config, self.run_tag, self.worker_env)
        self.record = RunRecord(self.run_tag)
        # Pipelining needs a channel that multiplexes replies: the asyncio front's.
        self.depth = 1 if blocking else config.pipeline
        self._starting = 0
        self._scheduled = 0  # replacements scheduled whose worker does not exist yet
        self._consecutive_start_failures = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drained: asyncio.Event | None = None
        self._ready_changed: asyncio.Event | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._broken: PoolBroken | None = None
        self._python = config.python

    # --- hot path: checkout and return -------------------------------------------------------

    def acquire(self, make_waiter: Callable[[], Waiter]) -> WorkerHandle | Waiter:
        """A leased worker now, or a queued waiter (FIFO) that will receive one."""
        with self.lock:
            if self.reject is not None:
                self.counters.calls_rejected += 1
                raise self.reject
            if not self.waiters:
                if self.idle:
                    w = self.idle.pop()
                    w.state = WState.BUSY
                    w.inflight = 1
                    self.leased += 1
                    return w
                if self.depth > 1:
                    shared = self._least_loaded()
                    if shared is not None:
                        shared.inflight += 1
                        self.leased += 1
                        return shared
            if len(self.waiters) >= self.config.max_queue:
                self.counters.calls_rejected += 1
                raise PoolSaturated(
                    f"{len(self.waiters)} callers are already waiting (max_queue="
                    f"{self.config.max_queue}); slow down, add workers or raise max_queue"
                )
            waiter = make_waiter()
            self.waiters.append(waiter)
            grow = self._should_grow()
        if grow:
            self._call_soon(self._grow)
        return waiter

    def _least_loaded(self) -> WorkerHandle | None:
        """With pipelining: the busy in-service worker with the fewest calls in flight."""
        best = None
        for w in self.workers.values():
            if (
                w.state is WState.BUSY
                and w.inflight < self.depth
                and w.death_cause is None
                and not w.retiring
                and not w.must_retire
                and (best is None or w.inflight < best.inflight)
            ):
                best = w
        return best

    def give_up(self, waiter: Waiter, *, cancelled: bool = False) -> WorkerHandle | None:
        """The waiter's caller stopped waiting. Returns a worker it was given meanwhile, if any."""
        with self.lock:
            if isinstance(waiter, ThreadWaiter):
                waiter.gave_up = True
                got = waiter.worker
            else:
                got = (
                    waiter.fut.result()
                    if waiter.fut.done()
                    and not waiter.fut.cancelled()
                    and waiter.fut.exception() is None
                    else None
                )
                if not waiter.fut.done():
                    waiter.fut.cancel()
            if got is None:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
                if cancelled:
                    self.counters.calls_cancelled += 1
                else:
                    self.counters.calls_rejected += 1
            drained = self.leased == 0 and not self.waiters and self._drained is not None
        if drained:
            self._call_soon(self._set_drained)
        return got

    def queue_timeout_error(self, waited: float) -> QueueTimeout:
        return QueueTimeout(
            f"no worker became free within {waited:.3g}s ({self.config.min_size} workers all "
            f"busy); the call was never sent. Raise queue_timeout or add workers"
        )

    def release(self, w: WorkerHandle, outcome: str | None, wait: float, latency: float) -> None:
        """Return a leased worker after a call; ``outcome`` feeds the counters."""
        give_to: Waiter | None = None
        retire = False
        with self.lock:
            c = self.counters
            if outcome is not None:
                if outcome == "ok":
                    c.calls_ok += 1
                elif outcome == "failed":
                    c.calls_failed += 1
                elif outcome == "timeout":
                    c.calls_timed_out += 1
                elif outcome == "crashed":
                    c.calls_crashed += 1
                elif outcome == "cancelled":
                    c.calls_cancelled += 1
                c.checkout_wait.append(wait)
                c.call_latency.append(latency)
                w.calls += 1
            self.leased -= 1
            w.inflight -= 1
            close_fds = False
            if w.inflight > 0 and (
                w.state is WState.DEAD or w.death_cause is not None or w.must_retire
            ):
                pass  # other calls still hold this worker; the last one to finish decides
            elif w.state is WState.DEAD or w.death_cause is not None:
                # Failed or being stopped: the exit handler replaces it.
                close_fds = w.close_on_release
                w.close_on_release = False
                if w.state is not WState.DEAD:
                    w.state = WState.STOPPING
            elif self._wants_retirement(w):
                if w.inflight == 0:
                    retire = True
                    w.state = WState.STOPPING
            else:
                if outcome is not None:  # a health ping is not use: it must not block shrinking
                    w.last_used = self.clock()
                while self.waiters:
                    waiter = self.waiters.popleft()
                    if waiter.give(w):
                        give_to = waiter
                        w.inflight += 1  # the lease passes straight to the waiter
                        self.leased += 1
                        break
                if give_to is None and w.inflight == 0:
                    w.state = WState.IDLE
                    self.idle.append(w)
            drained = self.leased == 0 and not self.waiters and self._drained is not None
        if close_fds and w.proc is not None:
            w.proc.close_fds()
        if retire:
            self._call_soon(self._retire, w)
        elif (
            self.config.max_memory is not None
            and give_to is None
            and w.state is WState.IDLE
            and self.clock() >= w.next_memory_check
        ):
            self._call_soon(self._check_memory, w)
        if drained:
            self._call_soon(self._set_drained)

    def _wants_retirement(self, w: WorkerHandle) -> bool:
        if w.max_calls is not None:
            replacement_ready = w.replacing is not None and w.replacing.state is not WState.STARTING
            # Past the limit, keep serving until the replacement is warm (capacity never dips),
            # but never past twice the limit.
            if w.calls >= w.max_calls and (replacement_ready or w.calls >= 2 * w.max_calls):
                w.must_retire = True
            elif w.calls == w.max_calls - 1 and not w.retiring:
                # Start the replacement now, so it is warm when this worker's last call ends.
                w.retiring = True
                self._call_soon(self._ensure_capacity)
        if w.must_retire:
            return True
        return w.retiring and w.replacing is not None and w.replacing.state is not WState.STARTING

    def _should_grow(self) -> bool:
        if self.config.upper_size == self.config.min_size:
            return False  # no max_size: nothing to decide, and this runs for every queued call
        live = self._scheduled + sum(
            1 for w in self.workers.values() if w.state not in (WState.DEAD, WState.STOPPING)
        )
        starting = self._starting + self._scheduled
        return len(self.waiters) > starting and live < self.config.upper_size

    # --- async-front helpers -----------------------------------------------------------------

    async def checkout_async(self, queue_timeout: float | None) -> tuple[WorkerHandle, float]:
        t0 = time.perf_counter()
        got = self.acquire(lambda: AsyncWaiter(self.loop.create_future()))
        if isinstance(got, WorkerHandle):
            return got, 0.0
        assert isinstance(got, AsyncWaiter)
        timer = None
        if queue_timeout is not None:
            timer = self.loop.call_later(queue_timeout, got.fail, self.queue_timeout_error(0))
        try:
            w = await got.fut
        except QueueTimeout:
            self.give_up(got)
            raise self.queue_timeout_error(time.perf_counter() - t0) from None
        except asyncio.CancelledError:
            late = self.give_up(got, cancelled=True)
            if late is not None:
                self.release(late, None, 0.0, 0.0)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return w, time.perf_counter() - t0

    def checkout_blocking(self, queue_timeout: float | None) -> tuple[WorkerHandle, float]:
        t0 = time.perf_counter()
        got = self.acquire(ThreadWaiter)
        if isinstance(got, WorkerHandle):
            return got, 0.0
        assert isinstance(got, ThreadWaiter)
        try:
            signalled = got.event.wait(queue_timeout)
        except BaseException:
            late = self.give_up(got, cancelled=True)
            if late is not None:
                self.release(late, None, 0.0, 0.0)
            raise
        if got.error is not None:
            raise got.error
        if not signalled:
            late = self.give_up(got)
            if late is None:
                raise self.queue_timeout_error(time.perf_counter() - t0)
            return late, time.perf_counter() - t0
        assert got.worker is not None
        return got.worker, time.perf_counter() - t0

    def encode_call(
        self,
        cmd: Command,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        *,
        batch: bool,
    ) -> tuple[str, int, bytes]:
        """``(name, flags, body)`` of a CALL with this pool's codec, frame limit and shm."""
        return encode_call(
            cmd,
            args,
            kwargs or {},
            pickle=self.pickle,
            max_frame_size=self.config.max_frame_size,
            batch=batch,
            shm=self.shm,
        )

    def finish_call(
        self, w: WorkerHandle, frame: Frame, name: str, *, batch: bool, waited: float, t1: float
    ) -> Any:
        """Decode a reply, return the worker (counting the outcome), and return or raise."""
        try:
            result = decode_reply(frame, name)
            if batch:
                result = unpack_batch(result, name)
        except ProtocolError:
            self.worker_failed(w, "protocol error")
            self.release(w, "crashed", waited, time.perf_counter() - t1)
            raise
        except BaseException:
            self.release(w, "failed", waited, time.perf_counter() - t1)
            raise
        self.release(w, "ok", waited, time.perf_counter() - t1)
        return result

    # --- failures seen by callers ----------------------------------------------------------

    def worker_failed(self, w: WorkerHandle, cause: str) -> None:
        """A caller saw the worker fail (timeout, crash, protocol error): kill it. Thread-safe."""
        with self.lock:
            if w.death_cause is None:
                w.death_cause = cause
        if w.proc is not None:
            w.proc.kill(signal.SIGKILL)
        # The exit watcher does the rest (replacement, counters) once the exit is observed.

    def crash_error(self, w: WorkerHandle, lost: ChannelLost, command: str) -> WorkerCrashed:
        """The exception for the caller whose call was running when the worker died."""
        assert w.proc is not None
        code = w.proc.returncode
        tail = w.stderr_tail()
        what = describe_exit(code)
        if isinstance(lost.cause, ProtocolViolation):
            cls: type[WorkerCrashed] = ProtocolError
            head = (
                f"worker {w.id} (pid {w.pid}) broke the protocol while running {command!r}: "
                f"{lost.cause}; it was killed and is being replaced"
            )
        elif w.death_cause == "closed":
            cls = WorkerCrashed
            head = (
                f"worker {w.id} (pid {w.pid}) was stopped by close() while running {command!r} "
                f"(the drain timeout passed): {what}"
            )
        else:
            cls = WorkerCrashed
            head = f"worker {w.id} (pid {w.pid}) died while running {command!r}: {what}"
        if tail:
            head += "\nlast stderr lines:\n  " + "\n  ".join(tail)
        return cls(head, exitcode=code, stderr_tail=tail, worker_id=w.id, pid=w.pid)

    async def wait_gone(self, w: WorkerHandle, timeout: float = 5.0) -> None:
        if w.gone.is_set():
            return
        fut = self.loop.create_future()
        w.gone_waiters.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    # --- supervisor -------------------------------------------------------------------------

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the core's loop, from any thread."""
        try:
            if self._on_loop_thread():
                self.loop.call_soon(fn, *args)
            else:
                self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # loop closed: the pool is gone

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, WorkerStartError):  # reported where it matters
                log.error("snakeden supervisor task failed", exc_info=exc)

    async def start(self) -> None:
        """Start the launcher and the workers concurrently; return once enough are ready."""
        self.state = "starting"
        self._drained = None
        self._ready_changed = asyncio.Event()
        await asyncio.to_thread(reap_leftovers, self.record.directory)
        self.record.write()
        try:
            await self.launcher.start(self.loop)
            for pid in self.launcher.pids():
                self.record.add(pid)
        except BaseException:
            self.state = "closed"
            self.record.remove()
            raise
        n = self.config.min_size
        need = self.config.min_ready or n
        tasks = [self._spawn_task(self._start_worker(initial=True)) for _ in range(n)]
        failures: dict[str, str] = {}
        first: WorkerStartError | None = None
        ready = 0
        pending: set[asyncio.Task[Any]] = set(tasks)
        try:
            while pending and ready < need:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    exc = t.exception()
                    if exc is None:
                        ready += 1
                    elif isinstance(exc, WorkerStartError):
                        failures.update(exc.failures or {"?": str(exc)})
                        first = first or exc
                    else:
                        raise exc
                if len(failures) > n - need:
                    raise WorkerStartError(
                        f"{len(failures)} of {n} workers failed to start (need {need}); "
                        f"first cause: {first}",
                        failures,
                    ) from first
        except BaseException:
            for t in pending:
                t.cancel()
            await self.aclose(cancel_pending=True)
            raise
        self.state = "running"
        if self.config.health_interval or self.config.idle_timeout or self.config.max_age:
            self._maintenance = self._spawn_task(self._maintain())
        self._ensure_capacity()

    async def wait_ready(self, n: int | None = None, timeout: float | None = None) -> None:
        """Until ``n`` (default: size) workers are ready. Raises TimeoutError, PoolBroken."""
        want = self.config.min_size if n is None else n
        assert self._ready_changed is not None

        async def until() -> None:
            assert self._ready_changed is not None
            while True:
                if self.reject is not None:
                    raise self.reject
                with self.lock:
                    ready = sum(1 for w in self.workers.values() if w.in_service)
                if ready >= want:
                    return
                self._ready_changed.clear()
                await self._ready_changed.wait()

        await asyncio.wait_for(until(), timeout)

    def _spec(self, worker_id: str) -> LaunchSpec:
        return LaunchSpec(
            worker_id=worker_id,
            target=self.config.target,
            python=self._python or sys.executable,
            env=dict(self.worker_env),
            cwd=self.config.cwd,
            run_tag=self.run_tag,
            max_frame_size=self.config.max_frame_size,
        )

    def _new_handle(self) -> WorkerHandle:
        max_calls = self.config.max_calls
        if max_calls is not None:
            # +-10% jitter, so workers started together do not all recycle together.
            spread = max(1, max_calls // 10)
            max_calls = max(1, max_calls + random.randint(-spread, spread))
        return WorkerHandle(f"w{next(_ids)}", self.clock(), max_calls)

    async def _start_worker(
        self, *, initial: bool = False, replaces: WorkerHandle | None = None
    ) -> WorkerHandle:
        """Launch one worker, wait for its HELLO, and put it in service."""
        w = self._new_handle()
        with self.lock:
            self.workers[w.id] = w
            self._starting += 1
        if replaces is not None:
            replaces.replacing = w
        t0 = time.perf_counter()
        try:
            await self._launch_and_handshake(w)
        except BaseException as exc:
            with self.lock:
                self._starting -= 1
                w.state = WState.DEAD
                if replaces is not None and replaces.replacing is w:
                    replaces.replacing = None  # the old worker must not retire for a dead one
            self.workers.pop(w.id, None)
            if w.proc is not None:
                w.proc.kill(signal.SIGKILL)
                try:
                    await self.wait_gone(w, 2.0)
                finally:
                    w.proc.close_fds()
            if isinstance(exc, WorkerStartError):
                self.counters.start_failures += 1
                self.events.emit("start_failed", w, t0, detail=str(exc))
                if not initial:
                    self._note_start_failure(exc)
            raise
        with self.lock:
            self._starting -= 1
            self._consecutive_start_failures = 0
            w.ready_at = self.clock()
            w.last_used = w.ready_at
        self.events.emit("ready", w, t0)
        if replaces is not None:
            self.events.emit("replaced", replaces, t0, detail=f"by {w.id}")
            if replaces.state is WState.IDLE:
                self._take_idle_and(replaces, self._retire)
        self.release_new(w)
        return w

    def release_new(self, w: WorkerHandle) -> None:
        with self.lock:
            self.leased += 1
            w.inflight = 1
            w.state = WState.BUSY
        self.release(w, None, 0.0, 0.0)
        if self._ready_changed is not None:
            self._ready_changed.set()

    async def _launch_and_handshake(self, w: WorkerHandle) -> None:
        spec = self._spec(w.id)
        proc = await self.launcher.launch(spec)  # WorkerStartError: e.g. a missing interpreter
        w.proc = proc
        self.record.add(proc.pid)
        for helper in self.launcher.pids():  # a template restarted after its death
            if helper not in self.record.pids:
                self.record.add(helper)
        self.events.emit("started", w, None)
        w.stdout = OutputTail("stdout", w.id, proc.pid)
        w.stderr = OutputTail("stderr", w.id, proc.pid)
        if proc.stdout_fd is not None:
            w.stdout.attach(self.loop, proc.stdout_fd)
        if proc.stderr_fd is not None:
            w.stderr.attach(self.loop, proc.stderr_fd)
        channel = Channel(proc.read_fd, proc.write_fd, self.config.max_frame_size)
        w.channel = channel
        channel.attach(self.loop, lambda lost: self._on_channel_lost(w, lost))
        proc.on_exit(lambda _p: self._call_soon(self._on_exit, w))
        hello = channel.expect(0)
        try:
            frame = await asyncio.wait_for(hello, self.config.start_timeout)
        except TimeoutError:
            raise WorkerStartError(
                f"worker {w.id} (pid {proc.pid}) did not say hello within "
                f"{self.config.start_timeout}s; its module may be slow to import (raise "
                f"start_timeout) or stuck" + self._tail_text(w),
                {w.id: "start timeout"},
            ) from None
        except ChannelLost as lost:
            await self.wait_gone(w, 5.0)
            raise WorkerStartError(
                f"worker {w.id} (pid {proc.pid}) died during start-up: "
                f"{describe_exit(proc.returncode)}" + self._tail_text(w),
                {w.id: describe_exit(proc.returncode) + self._tail_text(w)},
            ) from lost
        self._check_hello(w, frame)
        if self.blocking:
            channel.detach()

    def _check_hello(self, w: WorkerHandle, frame: Frame) -> None:
        body = decode_body(frame)
        if frame.kind == Kind.ERROR and isinstance(body, dict):
            tb = str(body.get("traceback") or body.get("message"))
            raise WorkerStartError(
                f"worker {w.id} (pid {w.pid}) failed to start: "
                f"{body.get('type')}: {body.get('message')}\n--- worker traceback ---\n{tb}",
                {w.id: tb},
            )
        if frame.kind != Kind.HELLO or not isinstance(body, dict):
            raise WorkerStartError(
                f"worker {w.id} sent {frame.kind} instead of HELLO; is it a snakeden worker?",
                {w.id: "bad handshake"},
            )
        version = body.get("protocol")
        if version != PROTOCOL_VERSION:
            raise WorkerStartError(
                f"worker {w.id} speaks protocol {version}, this host speaks {PROTOCOL_VERSION}; "
                f"install the same snakeden version in the worker's environment",
                {w.id: f"protocol {version}"},
            )
        w.commands = tuple(body.get("commands") or ())

    def _tail_text(self, w: WorkerHandle) -> str:
        tail = w.stderr_tail(20)
        return ("\nlast stderr lines:\n  " + "\n  ".join(tail)) if tail else ""

    def _note_start_failure(self, exc: WorkerStartError) -> None:
        self._consecutive_start_failures += 1
        if self._consecutive_start_failures >= self.config.max_start_failures:
            self._break(exc)

    def _break(self, cause: WorkerStartError) -> None:
        err = PoolBroken(
            f"the pool is broken: {self._consecutive_start_failures} workers in a row failed to "
            f"start; last cause:\n{cause}"
        )
        err.__cause__ = cause
        log.error("%s", err)
        with self.lock:
            if self.reject is None or self.state == "closing":
                self.reject = err
            self._broken = err
            waiters, self.waiters = list(self.waiters), deque()
        if self.state != "closing":
            self.state = "broken"
        for waiter in waiters:
            waiter.fail(err)
        if self._ready_changed is not None:
            self._ready_changed.set()

    def _on_channel_lost(self, w: WorkerHandle, lost: ChannelLost) -> None:
        # EOF usually means the process is exiting; anything else (garbage, an oversized frame)
        # means the channel cannot be trusted again: kill it either way.
        with self.lock:
            if w.death_cause is None:
                w.death_cause = (
                    f"protocol error: {lost.cause}" if lost.cause is not None else "channel lost"
                )
        if w.proc is not None and not w.proc.exited:
            w.proc.kill(signal.SIGKILL)

    def _on_exit(self, w: WorkerHandle) -> None:
        """The worker's process is gone (any reason). Runs on the loop."""
        assert w.proc is not None
        for tail in (w.stdout, w.stderr):
            if tail is not None:
                tail.drain()
                tail.detach()
        was_idle = False
        with self.lock:
            prior = w.state
            if prior is WState.IDLE:
                with contextlib.suppress(ValueError):
                    self.idle.remove(w)
                was_idle = True
            w.state = WState.DEAD
            # A caller holding the lease may be blocked in read() on the channel right now:
            # closing the fd under it would let the number be reused by the next worker's pipe.
            # The lease holder's release() closes it instead.
            close_now = prior is not WState.BUSY
            w.close_on_release = not close_now
        if w.channel is not None:
            w.channel.close()
        w.gone.set()
        for fut in w.gone_waiters:
            if not fut.done():
                fut.set_result(None)
        w.gone_waiters.clear()
        if close_now:
            w.proc.close_fds()
        cause = w.death_cause
        if w.ready_at is None:
            return  # it never became ready: a start failure, which _start_worker handles
        self.workers.pop(w.id, None)
        # Whatever it started in its process group goes with it (a worker that died on its own
        # did not get the chance to clean up).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.proc.pid, signal.SIGKILL)
        self.record.discard(w.proc.pid)
        if cause == "retired" or self.state in ("stopping", "closed"):
            return
        if self.state == "closing" and not self.waiters:
            return  # draining with nobody waiting: no replacement needed
        kind = "timed_out" if cause == "timeout" else "crashed"
        detail = describe_exit(w.proc.returncode)
        self.events.emit(kind, w, None, detail=f"{cause}: {detail}" if cause else detail)
        if was_idle:
            log.warning("idle worker %s died: %s", w.id, describe_exit(w.proc.returncode))
        self.counters.restarts += 1
        self._ensure_capacity()

    def _ensure_capacity(self) -> None:
        """Start workers until the pool has ``size`` that are not retiring. Loop only."""
        if not self._may_start():
            return
        with self.lock:
            active = [
                w
                for w in self.workers.values()
                if w.state not in (WState.DEAD, WState.STOPPING)
                and w.death_cause is None
                and not w.retiring
                and not w.must_retire
            ]
            # Replacements scheduled but still backing off count too, or every call here during
            # a back-off would schedule another one.
            missing = self.config.min_size - len(active) - self._scheduled
            retiring = [
                w
                for w in self.workers.values()
                if (w.retiring or w.must_retire)
                and not w.replacement_scheduled
                and w.state is not WState.DEAD
            ]
            self._scheduled += max(0, missing)
            pairs = [retiring[i] if i < len(retiring) else None for i in range(max(0, missing))]
            for old in pairs:
                if old is not None:
                    old.replacement_scheduled = True  # one replacement per retiring worker
        for replaces in pairs:
            self._spawn_task(self._replacement(replaces))

    async def _replacement(self, replaces: WorkerHandle | None) -> None:
        scheduled = True

        def unschedule() -> None:
            nonlocal scheduled
            if scheduled:
                scheduled = False
                with self.lock:
                    self._scheduled -= 1

        try:
            delay = 0.0
            if self._consecutive_start_failures:
                delay = min(
                    self.config.restart_backoff_max,
                    self.config.restart_backoff * 2 ** (self._consecutive_start_failures - 1),
                )
            if delay:
                if replaces is None:
                    self.events.emit_plain("backoff", delay, f"{delay:.3g}s before the next start")
                await asyncio.sleep(delay)
            if not self._may_start():
                return
            # _start_worker registers the new worker before it first yields: no gap in which
            # the pool would count neither it nor this scheduled start.
            unschedule()
            try:
                await self._start_worker(replaces=replaces)
            except WorkerStartError as exc:
                log.warning("replacement worker failed to start: %s", exc)
                if replaces is not None:
                    replaces.replacement_scheduled = False  # let the next attempt pair with it
                self._ensure_capacity()
        finally:
            unschedule()

    def _may_start(self) -> bool:
        """Start workers while running, and while closing if callers still wait to be served."""
        if self.state in ("running", "starting"):
            return self.reject is None
        return self.state == "closing" and bool(self.waiters) and self._broken is None

    def _grow(self) -> None:
        with self.lock:
            grow = self._should_grow() and self.state == "running"
            if grow:
                self._scheduled += 1
        if grow:
            self._spawn_task(self._replacement(None))

    def _take_idle_and(
        self, w: WorkerHandle, fn: Callable[[WorkerHandle], Any], *, lease: bool = False
    ) -> bool:
        """Take ``w`` out of the idle set and hand it to ``fn``: leased (to talk to it, then
        ``release``) or to stop it."""
        with self.lock:
            if w.state is not WState.IDLE:
                return False
            with contextlib.suppress(ValueError):
                self.idle.remove(w)
            if lease:
                w.state = WState.BUSY
                w.inflight = 1
                self.leased += 1
            else:
                w.state = WState.STOPPING
        fn(w)
        return True

    def _retire(self, w: WorkerHandle) -> None:
        """Stop a worker nobody is using (recycled) gracefully."""
        with self.lock:
            w.death_cause = "retired"
            self.counters.recycled += 1
        self.events.emit("recycled", w, None, detail=f"after {w.calls} calls")
        self._spawn_task(self._stop_worker(w))
        self._ensure_capacity()

    async def _stop_worker(self, w: WorkerHandle) -> None:
        """SHUTDOWN, then SIGTERM, then SIGKILL on a timer."""
        proc = w.proc
        if proc is None or proc.exited:
            return
        with self.lock:
            w.death_cause = w.death_cause or "closed"
        if w.channel is not None and w.channel.lost is None:
            data = encode_frame(Kind.SHUTDOWN)
            try:
                if self.blocking:
                    w.channel.write_blocking(data, time.monotonic() + 1.0)
                else:
                    w.channel.send(data)
            except (ChannelLost, TimeoutError, OSError):
                pass
        for sig, grace in (
            (None, self.config.shutdown_timeout),
            (signal.SIGTERM, 2.0),
            (signal.SIGKILL, 5.0),
        ):
            if sig is not None:
                proc.kill(sig)
            await self.wait_gone(w, grace)
            if proc.exited:
                break
        # What the worker started in its process group is killed by _on_exit, for every exit.

    def _check_memory(self, w: WorkerHandle) -> None:
        limit = self.config.max_memory
        if limit is None or w.pid is None:
            return
        w.next_memory_check = self.clock() + self.config.memory_check_interval
        used = _uss(w.pid)
        if used is not None and used > limit:
            self.events.emit("over_memory", w, None, detail=f"uss={used} limit={limit}")
            with self.lock:
                w.retiring = True  # serve on while the replacement warms...
                w.must_retire = used > 1.5 * limit  # ...unless far over the limit
            if w.must_retire:
                self._take_idle_and(w, self._retire)
            self._ensure_capacity()

    async def _maintain(self) -> None:
        cfg = self.config
        intervals = [x for x in (cfg.health_interval, cfg.idle_timeout, cfg.max_age) if x]
        period = max(0.05, min(intervals) / 2)
        while self.state == "running":
            await asyncio.sleep(period)
            now = self.clock()
            with self.lock:
                idle = list(self.idle)
                live = sum(1 for w in self.workers.values() if w.state is not WState.DEAD)
            for w in idle:
                if cfg.max_age is not None and now - w.born > cfg.max_age and not w.retiring:
                    w.retiring = True
                    self.events.emit("aged", w, None)
                    self._ensure_capacity()
                elif (
                    cfg.idle_timeout is not None
                    and live > cfg.min_size
                    and now - w.last_used > cfg.idle_timeout
                ):
                    if self._take_idle_and(w, self._retire_shrink):
                        live -= 1
                elif cfg.health_interval is not None and now - w.last_used > cfg.health_interval:
                    self._take_idle_and(w, lambda w: self._spawn_task(self._ping(w)), lease=True)

    def _retire_shrink(self, w: WorkerHandle) -> None:
        with self.lock:
            w.death_cause = "retired"
        self.events.emit("shrunk", w, None)
        self._spawn_task(self._stop_worker(w))

    async def _ping(self, w: WorkerHandle) -> None:
        """Health check of a worker taken out of the idle set."""
        assert w.channel is not None and w.proc is not None
        ok = False
        if _is_stopped(w.proc.pid):
            cause = "stopped (SIGSTOP?)"
        else:
            cause = "did not answer a ping"
            ident = w.channel.next_id()
            data = encode_frame(Kind.PING, ident)
            try:
                if self.blocking:
                    deadline = time.monotonic() + self.config.ping_timeout
                    await self.loop.run_in_executor(
                        None, w.channel.request_blocking, ident, data, deadline
                    )
                else:
                    fut = w.channel.expect(ident)
                    w.channel.send(data)
                    await asyncio.wait_for(fut, self.config.ping_timeout)
                ok = True
            except (TimeoutError, ChannelLost):
                w.channel.forget(ident)
        if not ok:
            log.warning("worker %s (pid %s) %s; replacing it", w.id, w.pid, cause)
            self.events.emit("unhealthy", w, None, detail=cause)
            self.worker_failed(w, cause)
        self.release(w, None, 0.0, 0.0)

    def _set_drained(self) -> None:
        if self._drained is not None:
            self._drained.set()

    # --- shutdown ---------------------------------------------------------------------------

    async def aclose(self, *, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Drain (or fail) pending calls, stop every worker, leave no process behind.

        Concurrent calls share one close: the later ones wait for the first to finish."""
        if self._closing is None:
            self._closing = self.loop.create_task(self._aclose(cancel_pending, timeout))
        await asyncio.shield(self._closing)

    async def _aclose(self, cancel_pending: bool, timeout: float | None) -> None:
        if self.state == "closed":
            return
        prior = self.state
        self.state = "closing"
        self._drained = asyncio.Event()
        with self.lock:
            if self.reject is None or prior != "broken":
                self.reject = PoolClosed("the pool is closed")
            failed = list(self.waiters) if cancel_pending else []
            if cancel_pending:
                self.waiters.clear()
            busy = self.leased > 0 or bool(self.waiters)
        for waiter in failed:
            waiter.fail(PoolClosed("the pool was closed before a worker became free"))
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        with self.lock:
            self.state = "stopping"  # no more replacements, even for waiters
            left, self.waiters = list(self.waiters), deque()
        for waiter in left:
            waiter.fail(PoolClosed("the pool was closed (drain timeout) before a worker was free"))
        if self._maintenance is not None:
            self._maintenance.cancel()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        workers = [w for w in self.workers.values() if w.proc is not None]
        await asyncio.gather(*(self._stop_worker(w) for w in workers), return_exceptions=True)
        for w in workers:
            await self.wait_gone(w, 5.0)
        await self.launcher.close()
        _shm.remove_leftovers(self.run_tag)
        self.record.remove()
        self.state = "closed"

    # --- introspection ----------------------------------------------------------------------

    def stats(self) -> PoolStats:
        with self.lock:
            c = self.counters
            ws = list(self.workers.values())
            stopping = sum(1 for w in ws if w.state is WState.STOPPING or w.death_cause)
            return PoolStats(
                state=self.state,
                workers=sum(1 for w in ws if w.state is not WState.DEAD) - stopping,
                stopping=stopping,
                starting=self._starting,
                ready=len(self.idle),
                busy=sum(1 for w in ws if w.inflight > 0),
                in_flight=self.leased,
                queued=len(self.waiters),
                calls_ok=c.calls_ok,
                calls_failed=c.calls_failed,
                calls_timed_out=c.calls_timed_out,
                calls_crashed=c.calls_crashed,
                calls_rejected=c.calls_rejected,
                calls_cancelled=c.calls_cancelled,
                restarts=c.restarts,
                recycled=c.recycled,
                start_failures=c.start_failures,
                checkout_wait=Percentiles.of(list(c.checkout_wait)),
                call_latency=Percentiles.of(list(c.call_latency)),
            )

    def pids(self) -> list[int]:
        with self.lock:
            return [
                w.proc.pid
                for w in self.workers.values()
                if w.proc is not None and w.state is not WState.DEAD
            ]


def make_launcher(config: PoolConfig, run_tag: str, env: dict[str, str]) -> Launcher:
    """The launcher for ``start_method``: ``auto`` forks from a template where it can."""
    method = config.start_method
    if method == "auto":
        same_python = config.python is None or os.path.realpath(config.python) == os.path.realpath(
            sys.executable
        )
        method = (
            "fork" if hasattr(os, "fork") and sys.platform == "linux" and same_python else "spawn"
        )
    if method == "fork":
        from snakeden._template import ForkLauncher

        return ForkLauncher(
            config.target,
            config.preload,
            python=config.python,
            env=env,
            cwd=config.cwd,
            run_tag=run_tag,
            start_timeout=config.start_timeout,
        )
    return SpawnLauncher()


def _uss(pid: int) -> int | None:
    try:
        import psutil

        return int(psutil.Process(pid).memory_full_info().uss)
    except Exception:
        return None


def _is_stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state in (b"T", b"t")
    except (OSError, IndexError):
        return False
