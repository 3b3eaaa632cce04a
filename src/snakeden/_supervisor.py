"""The supervisor: everything about worker processes that is not a call.

It runs on the pool's event loop and carries out what :class:`~snakeden._checkout.Checkout`
decides: launch and handshake, exit watching, replacement with back-off, recycling, health pings,
memory checks, shrinking, and shutdown. It is never on a call's path: callers take workers from
the checkout themselves and only come here (through ``PoolCore``) when a worker failed them.

Data flow::

    Checkout step (state, under its lock) --returns Actions--> Supervisor.act()
        wake a waiter / stop a retired worker / start replacements / check memory

    launcher.launch() -> WorkerProcess ---------> channel + output capture attached
    HELLO (or ERROR, or nothing)      ---------> checkout.ready() / start failure
    process exit (pidfd or template)  ---------> _on_exit -> checkout.exited() -> replace?
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from snakeden import _regions, _shm
from snakeden._channel import Channel, ChannelLost
from snakeden._checkout import Actions, Checkout, Phase
from snakeden._config import PoolConfig
from snakeden._errors import PoolBroken, PoolClosed, WorkerStartError, describe_exit
from snakeden._events import EventHub, EventKind
from snakeden._handle import Cause, WorkerHandle
from snakeden._hello import check_hello
from snakeden._output import OutputTail, tail_text
from snakeden._pipeline import take_back
from snakeden._process import Launcher, LaunchSpec
from snakeden._protocol import (
    FEATURE_BEGUN,
    FEATURE_REGIONS,
    Frame,
    Kind,
    encode_frame,
)
from snakeden._reaper import RunRecord
from snakeden._sessions import SessionRecord

log = logging.getLogger("snakeden")

_ids = itertools.count(1)


class Supervisor:
    def __init__(
        self,
        config: PoolConfig,
        loop: asyncio.AbstractEventLoop,
        checkout: Checkout,
        *,
        launcher: Launcher,
        events: EventHub,
        record: RunRecord,
        worker_env: dict[str, str],
        blocking: bool,
    ) -> None:
        self.config = config
        self.loop = loop
        self.checkout = checkout
        self.launcher = launcher
        self.events = events
        self.record = record
        self.worker_env = worker_env
        self.blocking = blocking  # the thread front reads its channels itself
        self.on_host_call: Callable[[Channel, Frame], None] | None = None  # the pool's
        self.clock = config.clock
        self.ready_changed = asyncio.Event()
        self.drained = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._warned_no_commands = False
        # Set by the core: drops the state of sessions idle past their TTL (SESSION_CLOSE).
        self.on_sessions_expired: Callable[[list[SessionRecord]], None] | None = None

    # --- running things on the loop ------------------------------------------------------------

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the pool's loop, from any thread."""
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

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
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

    # --- carrying out what the checkout decided ---------------------------------------------

    def act(self, act: Actions | None) -> None:
        """Do what a checkout step decided. From any thread; the hot part (waking the next
        caller) happens right here, the rest on the loop."""
        if act is None:
            return
        if act.wake is not None:
            act.wake.wake()
        if act.close_fds is not None and act.close_fds.proc is not None:
            act.close_fds.proc.close_fds()
        if (
            act.retire
            or act.ensure_capacity
            or act.check_memory
            or act.drained
            or act.flush
            or act.take_back
        ):
            if self._on_loop_thread():
                # At once: the pool is never seen between a decision and its replacement.
                self._act_on_loop(act)
            else:
                self.call_soon(self._act_on_loop, act)

    def _act_on_loop(self, act: Actions) -> None:
        if act.flush is not None:
            self._flush(act.flush)
        if act.take_back is not None:
            take_back(act.take_back, self.events)  # its caller sends it again: to the free one
        if act.retire is not None:
            w = act.retire
            self.events.emit("recycled", w, None, detail=f"after {w.calls} calls")
            self.spawn(self.stop_worker(w))
        if act.check_memory is not None:
            self.spawn(self._check_memory(act.check_memory))
        if act.retire is not None or act.ensure_capacity:
            self.ensure_capacity()
        if act.drained:
            self.drained.set()

    def _flush(self, w: WorkerHandle) -> None:
        """Write what waits in ``w``'s outbox (SESSION_CLOSE, blocking mode), on a lease of
        its own, then pass the worker on."""
        data = self.checkout.take_outbox(w)
        if w.channel is not None and data:
            w.channel.notify(data)
        self.act(self.checkout.release(w, None))

    def fail(self, w: WorkerHandle, cause: Cause) -> None:
        """Take ``w`` out of service and kill it (its process group). Thread-safe; the exit
        watcher does the rest (replacement, counters) once the exit is observed."""
        self.checkout.fail(w, cause)
        if w.proc is not None:
            w.proc.kill(signal.SIGKILL)

    # --- start-up ----------------------------------------------------------------------------

    def spec(self, worker_id: str) -> LaunchSpec:
        return LaunchSpec(
            worker_id=worker_id,
            target=self.config.target,
            python=self.config.python or sys.executable,
            env=dict(self.worker_env),
            cwd=self.config.cwd,
            run_tag=self.record.run_tag,
            max_frame_size=self.config.max_frame_size,
        )

    def new_handle(self) -> WorkerHandle:
        max_calls = self.config.max_calls
        if max_calls is not None:
            # +-10% jitter, so workers started together do not all recycle together. Not below
            # 10 calls: +-1 there would be up to +-50%, and a small limit is meant exactly.
            spread = max_calls // 10
            if spread:
                max_calls += random.randint(-spread, spread)
        return WorkerHandle(f"w{next(_ids)}", self.clock(), max_calls)

    async def start_worker(
        self,
        *,
        initial: bool = False,
        replaces: WorkerHandle | None = None,
        scheduled: bool = False,
    ) -> WorkerHandle:
        """Launch one worker, wait for its HELLO, and put it in service."""
        w = self.new_handle()
        self.checkout.add(w, scheduled=scheduled)
        if replaces is not None:
            replaces.replacing = w
        t0 = time.perf_counter()
        try:
            await self._launch_and_handshake(w)
        except BaseException as exc:
            if replaces is not None and replaces.replacing is w:
                replaces.replacing = None  # the old worker must not retire for a dead one
            broken = self.checkout.start_failed(w, in_a_row=not initial)
            if w.proc is not None:
                w.proc.kill(signal.SIGKILL)
                try:
                    await self.wait_gone(w, 2.0)
                finally:
                    w.proc.close_fds()
            if isinstance(exc, WorkerStartError):
                self.events.emit("start_failed", w, t0, detail=str(exc))
                if broken and not initial:
                    self._break(exc)
            raise
        in_service, act = self.checkout.ready(w)
        if in_service:
            self.events.emit("ready", w, t0)
            if replaces is not None:
                self.events.emit("replaced", replaces, t0, detail=f"by {w.id}")
                if self.checkout.take_idle(replaces, stop=Cause.RETIRED):
                    self.act(Actions(retire=replaces))
                # A busy one retires at its release, now that its replacement is ready.
        else:
            self._report_exit(w, "right after start-up")
        self.act(act)
        self.ready_changed.set()
        return w

    async def _launch_and_handshake(self, w: WorkerHandle) -> None:
        begun = _shm.begun_path(self.record.run_tag, w.id)
        slot = _shm.map_slot(begun, create=True)
        paths = []
        if _regions.ENV in self.worker_env:  # shared-memory regions (_regions)
            paths = [_regions.region_path(self.record.run_tag, w.id, d) for d in _regions.DIRS]
            w.region_in, w.region_out = (_regions.Region.open(p, create=True) for p in paths)
        try:
            await self._launch_and_handshake_with(w, slot)
        finally:
            # Both sides have them open by the HELLO (or never will): no file to leave behind.
            for path in (begun, *paths):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def _launch_and_handshake_with(self, w: WorkerHandle, slot: memoryview | None) -> None:
        proc = await self.launcher.launch(self.spec(w.id))  # WorkerStartError: no interpreter
        w.proc = proc
        if proc.local:  # a remote worker's owner on its node sees to its processes
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
        channel.on_host_call = self.on_host_call
        channel.attach(self.loop, lambda lost: self._on_channel_lost(w, lost))
        proc.on_exit(lambda _p: self.call_soon(self._on_exit, w))
        hello = channel.expect(0)
        try:
            frame = await asyncio.wait_for(hello, self.config.start_timeout)
        except TimeoutError:
            raise WorkerStartError(
                f"worker {w.id} (pid {proc.pid}) did not say hello within "
                f"{self.config.start_timeout}s; its module may be slow to import (raise "
                f"start_timeout) or stuck, or not a snakeden worker at all"
                + tail_text(w.stderr_tail(20))
                + _stdout_text(w),
                {w.id: "start timeout"},
            ) from None
        except ChannelLost as lost:
            await self.wait_gone(w, 5.0)
            tail = w.stderr_tail(20)
            # The launcher knows what its runtime's death looks like (e.g. no snakeden in that
            # interpreter): its diagnosis beats an exit code.
            cause = self.launcher.diagnose(tail) or describe_exit(proc.returncode)
            if lost.cause is not None:
                # It wrote, but not frames: a program that is not a snakeden worker.
                cause = (
                    f"it wrote bytes on its channel that are not snakeden frames ({lost.cause}); "
                    f"is it a snakeden worker?"
                )
            raise WorkerStartError(
                f"worker {w.id} (pid {proc.pid}) died during start-up: {cause}"
                + tail_text(tail)
                + _stdout_text(w),
                {w.id: cause + tail_text(tail)},
            ) from lost
        features = check_hello(w, frame, self.config.serializer)
        if slot is not None and FEATURE_BEGUN in features:
            channel.begun = slot  # only a worker that says it notes its calls there
        if (
            FEATURE_REGIONS not in features
            or w.region_in is None
            or w.region_out is None
            or w.depth > 1  # a region holds one message; overlapping calls go by pipe
        ):
            w.region_in = w.region_out = None  # calls go by pipe
        if not w.commands and self.config.target and not self._warned_no_commands:
            self._warned_no_commands = True  # once per pool, not once per worker
            if self.launcher.runs_python:
                log.warning(
                    "worker module %r defines no @snakeden.command: calls by name will fail "
                    "with UnknownCommand; only calls by reference (pool.call(function)) work",
                    self.config.target,
                )
            else:
                log.warning("worker %r serves no commands", self.config.target)
        if self.blocking and w.depth == 1:
            channel.detach()  # else calls share it: the thread front routes them via the loop

    def _break(self, cause: WorkerStartError) -> None:
        err = PoolBroken(
            f"the pool is broken: {self.checkout.failures_in_a_row} workers in a row failed to "
            f"start; last cause:\n{cause}"
        )
        err.__cause__ = cause
        log.error("%s", err)
        for waiter in self.checkout.break_(err):
            waiter.fail(err)
        self.ready_changed.set()

    # --- replacement ---------------------------------------------------------------------------

    def ensure_capacity(self) -> None:
        """Start workers until the pool has ``size`` that are not on their way out. Loop only."""
        for replaces in self.checkout.plan_capacity():
            self.spawn(self._replacement(replaces))

    def grow(self) -> None:
        if self.checkout.plan_growth():
            self.spawn(self._replacement(None))

    async def _replacement(self, replaces: WorkerHandle | None) -> None:
        scheduled = True
        try:
            delay = self.checkout.backoff()
            if delay:
                if replaces is None:
                    self.events.emit_plain("backoff", delay, f"{delay:.3g}s before the next start")
                await asyncio.sleep(delay)
            if not self.checkout.may_start():
                return
            scheduled = False  # start_worker takes the scheduled place in its first step
            try:
                await self.start_worker(replaces=replaces, scheduled=True)
            except WorkerStartError as exc:
                log.warning("replacement worker failed to start: %s", exc)
                if replaces is not None:
                    replaces.replacement_scheduled = False  # let the next attempt pair with it
                self.ensure_capacity()
        finally:
            if scheduled:
                self.checkout.unschedule()

    # --- exits -----------------------------------------------------------------------------------

    def _on_channel_lost(self, w: WorkerHandle, lost: ChannelLost) -> None:
        # EOF usually means the process is exiting; anything else (garbage, an oversized frame)
        # means the channel cannot be trusted again: kill it either way.
        self.fail(w, Cause.PROTOCOL if lost.cause is not None else Cause.CRASHED)

    def _on_exit(self, w: WorkerHandle) -> None:
        """The worker's process is gone, for any reason. Runs on the loop."""
        assert w.proc is not None
        for tail in (w.stdout, w.stderr):
            if tail is not None:
                tail.drain()
                tail.detach()
        close_now, unplanned = self.checkout.exited(w)
        if w.channel is not None:
            w.channel.close()
        w.gone.set()
        for fut in w.gone_waiters:
            if not fut.done():
                fut.set_result(None)
        w.gone_waiters.clear()
        if close_now:
            w.proc.close_fds()
        w.proc.kill_group()  # whatever it started in its process group goes with it
        self.record.discard(w.proc.pid)
        if unplanned:
            self._report_exit(w, "")
            self.ensure_capacity()

    def _report_exit(self, w: WorkerHandle, when: str) -> None:
        assert w.proc is not None and w.cause is not None
        kind: EventKind = "timed_out" if w.cause is Cause.TIMEOUT else "crashed"
        detail = describe_exit(w.proc.returncode)
        if w.cause is not Cause.EXITED:
            detail = f"{w.cause.value}: {detail}"
        if when:
            detail = f"{detail} ({when})"
        self.events.emit(kind, w, None, detail=detail)
        if w.cause is Cause.EXITED:
            log.warning("worker %s (pid %s) died %s: %s", w.id, w.pid, when or "idle", detail)

    async def wait_gone(self, w: WorkerHandle, timeout: float = 5.0) -> None:
        if w.gone.is_set():
            return
        fut = self.loop.create_future()
        w.gone_waiters.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    async def stop_worker(self, w: WorkerHandle) -> None:
        """SHUTDOWN, then SIGTERM, then SIGKILL on a timer."""
        proc = w.proc
        if proc is None or proc.exited:
            return
        self.checkout.fail(w, Cause.CLOSED)  # no-op if already out of service
        if w.channel is not None:
            w.channel.notify(encode_frame(Kind.SHUTDOWN))
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

    # --- maintenance ---------------------------------------------------------------------------

    def start_maintenance(self) -> None:
        if _periods(self.config):
            self._maintenance = self.spawn(self._maintain())

    async def _maintain(self) -> None:
        intervals = _periods(self.config)
        period = max(0.05, min(intervals) / 2)
        while self.checkout.phase is Phase.RUNNING:
            await asyncio.sleep(period)
            now = self.clock()
            expired = self.checkout.expire_sessions(now)
            if expired and self.on_sessions_expired is not None:
                self.on_sessions_expired(expired)
            for w, what in self.checkout.due(now):
                if what == "age":
                    self.events.emit("aged", w, None)
                    self.act(self.checkout.mark_retiring(w))
                elif what == "shrink":
                    if self.checkout.take_idle(w, stop=Cause.SHRUNK):
                        self.events.emit("shrunk", w, None)
                        self.spawn(self.stop_worker(w))
                elif what == "ping":
                    if self.checkout.take_idle(w):
                        self.spawn(self._ping(w))
                elif what == "memory":
                    self.spawn(self._check_memory(w))
                elif what == "retire" and self.checkout.take_idle(w, stop=Cause.RETIRED):
                    self.act(Actions(retire=w, ensure_capacity=True))

    async def _check_memory(self, w: WorkerHandle) -> None:
        limit = self.config.max_memory
        pid = w.pid
        if limit is None or pid is None or not w.in_service or w.proc is None or not w.proc.local:
            return
        # Reading smaps takes milliseconds: off the loop, so calls are not held up.
        used = await asyncio.to_thread(_uss, pid)
        if used is None or used <= limit or not w.in_service:
            return
        self.events.emit("over_memory", w, None, detail=f"uss={used} limit={limit}")
        # Serve on while the replacement warms, unless far over the limit.
        self.act(self.checkout.mark_retiring(w, now=used > 1.5 * limit))

    async def _ping(self, w: WorkerHandle) -> None:
        """Health check of a worker leased from the idle set."""
        assert w.channel is not None and w.proc is not None
        try:
            cause = None
            if w.proc.local and _is_stopped(w.proc.pid):
                cause = "stopped (SIGSTOP?)"
            else:
                ident = w.channel.next_id()
                try:
                    await w.channel.roundtrip(
                        ident, encode_frame(Kind.PING, ident), self.config.ping_timeout
                    )
                except (TimeoutError, ChannelLost):
                    cause = "did not answer a ping"
            if cause is not None:
                log.warning("worker %s (pid %s) %s; replacing it", w.id, w.pid, cause)
                self.events.emit("unhealthy", w, None, detail=cause)
                self.fail(w, Cause.UNHEALTHY)
        finally:
            # Also when close() cancels the ping: the lease must not outlive the pool.
            self.act(self.checkout.release(w, None))

    # --- shutdown --------------------------------------------------------------------------------

    async def close(self, *, cancel_pending: bool, timeout: float | None) -> None:
        failed, busy = self.checkout.begin_close(cancel_pending=cancel_pending)
        for waiter in failed:
            waiter.fail(PoolClosed("the pool was closed before a worker became free"))
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), timeout)
        for waiter in self.checkout.stop():
            waiter.fail(PoolClosed("the pool was closed (drain timeout) before a worker was free"))
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        workers = [w for w in list(self.checkout.workers.values()) if w.proc is not None]
        await asyncio.gather(*(self.stop_worker(w) for w in workers), return_exceptions=True)
        for w in workers:
            await self.wait_gone(w, 5.0)


def _periods(cfg: PoolConfig) -> list[float]:
    """The periods maintenance serves (none: no maintenance task)."""
    memory = cfg.memory_check_interval if cfg.max_memory else None
    every = (cfg.health_interval, cfg.idle_timeout, cfg.max_age, memory, cfg.session_ttl)
    # session_hold only matters with something to recycle by; 0 means at once, not a period.
    hold = cfg.session_hold if cfg.max_calls or cfg.max_age or cfg.max_memory else None
    return [x for x in (*every, hold) if x]


def _stdout_text(w: WorkerHandle) -> str:
    """A start-up error's last stdout lines: a program that is not a worker often says why
    there (or prints what it prints instead of a HELLO)."""
    lines = list(w.stdout.lines)[-10:] if w.stdout is not None else []
    return ("\nlast stdout lines:\n  " + "\n  ".join(lines)) if lines else ""


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
