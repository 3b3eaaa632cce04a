"""The races that fault storms found, each with its window held open on purpose.

A storm hits these windows one run in several; here each is forced every time. Where the window
is in the host (between two steps of the pool), the test holds it by blocking the event loop or
by a seam that delays one step until the pool has seen the worker die; where it is in the worker,
by a rendezvous the worker writes to. After each, the pool's books must balance
(``check_invariants``) and ``close()`` must return.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import psutil
import pytest

import snakeden
from snakeden._channel import Channel
from snakeden._handle import WorkerHandle
from snakeden._supervisor import Supervisor
from snakeden._waiters import AsyncWaiter, QueuedCall
from tests.conftest import run
from tests.recorder import Recorder
from tests.rendezvous import Rendezvous

EX = "snakeden.examples"
FAULTS = "tests.workers.faults"


def _kill_and_wait_dead(pid: int) -> None:
    """SIGKILL ``pid`` and block until the kernel has it gone (not our child: poll psutil)."""
    os.kill(pid, signal.SIGKILL)
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    gone, _ = psutil.wait_procs([proc], timeout=30)
    if not gone:  # still a zombie of the template: its fds are closed all the same
        assert proc.status() == psutil.STATUS_ZOMBIE


def _core(pool: snakeden.Pool | snakeden.SyncPool) -> Any:
    core = pool._core
    assert core is not None
    return core


# --- 1. a worker that dies between being handed to a queued caller and that caller's send ------


@pytest.mark.parametrize(
    ("method", "timeout"),
    # A plain call queues as a QueuedCall, which the hand-off itself sends; a call with a
    # timeout as an AsyncWaiter, whose task sends it once woken.
    [("fork", None), ("spawn", None), ("fork", 60.0)],
)
def test_worker_dies_between_hand_off_and_send_the_call_runs_elsewhere(
    method: str, timeout: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter_class = AsyncWaiter if timeout else QueuedCall

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag = Rendezvous(tmp)
            async with snakeden.Pool(
                FAULTS,
                size=1,
                start_method=method,
                pipeline=1,  # the second call waits
            ) as pool:
                core = _core(pool)
                release = os.path.join(tmp, "release")
                os.mkfifo(release)
                first = asyncio.create_task(pool.call("block_until", str(flag), release))
                pid_of_first = int(await flag.wait_async())
                orig_wake = waiter_class.wake
                held: list[WorkerHandle] = []

                def wake_after_death(waiter: AsyncWaiter) -> None:
                    # The release has handed the worker to the queued caller: kill the worker
                    # now and let the caller resume only once the pool has seen it die.
                    w = waiter.worker
                    assert w is not None and w.pid is not None
                    held.append(w)
                    monkeypatch.setattr(waiter_class, "wake", orig_wake)
                    _kill_and_wait_dead(w.pid)

                    async def later() -> None:
                        await core.wait_gone(w, 30)
                        orig_wake(waiter)

                    core.sup.spawn(later())

                monkeypatch.setattr(waiter_class, "wake", wake_after_death)
                second = asyncio.create_task(pool.call("getpid", timeout=timeout))
                await asyncio.sleep(0)  # runs the second caller up to its place in the queue
                assert pool.stats().queued == 1
                # Only now does the first call end: its release hands the worker over.
                await asyncio.to_thread(pathlib.Path(release).write_text, "x")
                await first
                # The second call never reached the dead worker: it ran on the replacement.
                pid_of_second = await asyncio.wait_for(second, 60)
                assert held and held[0].pid == pid_of_first
                assert pid_of_second != pid_of_first
                s = pool.stats()
                assert s.calls_crashed == 0 and s.calls_redispatched == 1 and s.in_flight == 0
                core.check_invariants()
            core.check_invariants()

    run(body())


# --- 2. a worker that dies right after its HELLO --------------------------------------------------


@pytest.mark.parametrize("front", ["async", "sync"])
def test_worker_dead_right_after_hello_is_replaced(
    front: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    orig = Supervisor._launch_and_handshake
    victims: list[int] = []

    async def handshake_then_die(self: Supervisor, w: WorkerHandle) -> None:
        await orig(self, w)
        if not victims:
            # HELLO is in, the worker not yet in service: the pool must see the death first.
            assert w.pid is not None
            victims.append(w.pid)
            w.proc.kill(signal.SIGKILL)  # type: ignore[union-attr]
            await self.wait_gone(w, 30)

    monkeypatch.setattr(Supervisor, "_launch_and_handshake", handshake_then_die)
    rec = Recorder()
    if front == "async":

        async def body() -> None:
            async with snakeden.Pool(EX, size=1, on_event=rec) as pool:
                assert await pool.call("pid") != victims[0]
                assert pool.stats().workers == 1 and pool.stats().restarts == 1
                _core(pool).check_invariants()

        run(body())
    else:
        with snakeden.SyncPool(EX, size=1, on_event=rec) as pool:
            assert pool.call("pid") != victims[0]
            assert pool.stats().workers == 1 and pool.stats().restarts == 1
            _core(pool).check_invariants()
    crashed = [e for e in rec.events if e.kind == "crashed"]
    assert len(crashed) == 1 and "right after start-up" in crashed[0].detail
    assert crashed[0].pid == victims[0]


# --- 3. a cancellation in the same loop turn as the reply ---------------------------------------


def test_cancel_in_the_same_loop_turn_as_the_reply_keeps_the_worker() -> None:
    async def body() -> None:
        rec = Recorder()
        async with snakeden.Pool(EX, size=1, cancel_grace=60, on_event=rec) as pool:
            pid = await pool.call("pid")
            (w,) = _core(pool).checkout.workers.values()
            channel: Channel = w.channel
            loop = asyncio.get_running_loop()
            task: asyncio.Task[Any] | None = None

            def cancel_then_read() -> None:
                # The reply is readable: cancel its caller first, in this same callback.
                if task is not None and not task.done():
                    task.cancel()
                channel._on_readable()

            loop.add_reader(channel.read_fd, cancel_then_read)  # replaces the channel's reader
            task = asyncio.create_task(pool.call("sleep", 0.2))
            with pytest.raises(asyncio.CancelledError):
                await task
            loop.add_reader(channel.read_fd, channel._on_readable)
            # The reply was claimed, not waited for: no kill after cancel_grace (60 s, which
            # would time the test out), the worker is back at once and keeps its state.
            assert await asyncio.wait_for(pool.call("pid"), 30) == pid
            s = pool.stats()
            assert s.calls_cancelled == 1 and s.restarts == 0 and s.in_flight == 0
            assert "crashed" not in rec.kinds()
            _core(pool).check_invariants()

    run(body())


# --- 5. calls that never ran are sent elsewhere, silently -----------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_async_call_to_an_idle_worker_already_dead_runs_elsewhere(method: str) -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=2, start_method=method) as pool:
            pids = set(pool.worker_pids())
            victim = await pool.call("pid")
            # Blocking the loop holds the window: the worker is dead, the pool cannot know yet,
            # and the next checkout hands out the same (most recently used) worker.
            _kill_and_wait_dead(victim)
            assert await pool.call("pid") in pids - {victim}
            s = pool.stats()
            assert (s.calls_ok, s.calls_crashed, s.calls_redispatched) == (2, 0, 1)
            await pool.wait_ready(timeout=60)
            _core(pool).check_invariants()

    run(body())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sync_call_to_an_idle_worker_already_dead_runs_elsewhere(method: str) -> None:
    with snakeden.SyncPool(EX, size=1, start_method=method) as pool:
        victim = pool.call("pid")
        hold = threading.Event()
        pool._loop.call_soon_threadsafe(hold.wait, 60)  # the supervisor cannot see the exit
        try:
            _kill_and_wait_dead(victim)
            result: list[int] = []
            caller = threading.Thread(target=lambda: result.append(pool.call("pid")))
            caller.start()
            # It found the dead worker, was not sent, and waits for the replacement.
            _wait_until(lambda: pool.stats().calls_redispatched == 1)
            assert pool.stats().queued == 1
        finally:
            hold.set()
        caller.join(60)
        assert result and result[0] != victim
        s = pool.stats()
        assert (s.calls_ok, s.calls_crashed, s.calls_redispatched) == (2, 0, 1)
        _core(pool).check_invariants()


def test_a_call_already_written_when_the_worker_died_unread_is_sent_again() -> None:
    """The worker stopped (SIGSTOP) before reading the call, then killed: the frame is still in
    the pipe, so the pool knows it never ran."""
    with snakeden.SyncPool(EX, size=2) as pool:
        victim = pool.call("pid")
        os.kill(victim, signal.SIGSTOP)
        # kill() only queues the signal: until the worker is really stopped, it may still be
        # running on the other core, about to read what comes next.
        _wait_until(lambda: psutil.Process(victim).status() == psutil.STATUS_STOPPED)
        result: list[int] = []
        caller = threading.Thread(target=lambda: result.append(pool.call("pid")))
        caller.start()
        _wait_until(lambda: pool.stats().in_flight == 1)
        os.kill(victim, signal.SIGKILL)
        caller.join(60)
        assert result and result[0] != victim
        s = pool.stats()
        assert (s.calls_crashed, s.calls_redispatched) == (0, 1)


def test_a_call_that_may_have_run_is_not_sent_again() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag = Rendezvous(tmp)
            async with snakeden.Pool(FAULTS, size=1) as pool:
                call = asyncio.create_task(pool.call("block", str(flag), 3600))
                pid = int(await flag.wait_async())
                os.kill(pid, signal.SIGKILL)
                with pytest.raises(snakeden.WorkerCrashed, match="SIGKILL"):
                    await call
                s = pool.stats()
                assert (s.calls_crashed, s.calls_redispatched) == (1, 0)

    run(body())


def _wait_until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """For states the pool reaches on another thread with no event to wait on: a bounded poll
    on the state itself (not a sleep standing in for it)."""
    never = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        never.wait(0.005)
    raise AssertionError(f"not true within {timeout}s")


@pytest.mark.parametrize("front", ["async", "sync"])
def test_garbage_from_an_idle_worker_fails_no_call(front: str) -> None:
    """A worker that writes garbage while idle is finished, but the next call never reached it:
    the asyncio front notices at once (its reader watches idle channels), the thread front
    when it checks the channel before writing."""
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        os.mkfifo(go)
        done = Rendezvous(tmp, "done")

        def tell_and_wait() -> None:
            with open(go, "w") as f:
                f.write("x")
            assert done.wait() == "written"

        if front == "sync":
            with snakeden.SyncPool(FAULTS, size=1) as pool:
                victim = pool.call("getpid")
                pool.call("garbage_when_told", go, str(done))
                tell_and_wait()
                assert pool.call("getpid") != victim
                s = pool.stats()
                assert (s.calls_crashed, s.calls_redispatched, s.calls_ok) == (0, 1, 3)
        else:

            async def body() -> None:
                rec = Recorder()
                async with snakeden.Pool(FAULTS, size=1, on_event=rec) as pool:
                    victim = await pool.call("getpid")
                    await pool.call("garbage_when_told", go, str(done))
                    with open(go, "w") as f:
                        f.write("x")
                    # Killed for it before it can say so: the pool's own report is the event.
                    await rec.wait_count_async("crashed")
                    (crashed,) = [e for e in rec.events if e.kind == "crashed"]
                    assert "protocol error" in crashed.detail and crashed.pid == victim
                    assert await pool.call("getpid") != victim
                    s = pool.stats()
                    assert s.calls_crashed == 0 and s.calls_ok == 3

            run(body())
