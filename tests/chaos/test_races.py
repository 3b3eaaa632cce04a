"""The races issue 8's storms found, each made to happen on purpose.

A storm hits these windows by chance; here the test holds the pool's event loop (it runs on the
same loop: a plain blocking wait in the test body, or in an ``on_event`` callback, blocks it)
until a worker has reached the point that opens the window: its reply is in our pipe, unread;
it has said HELLO and died; it is dead while the pool still counts it idle. Then the loop
processes everything at once, in the order the race needs. Each wait is on a process exit or on
a pipe becoming readable, with a generous bound.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import select
import signal
import stat
import threading
from collections.abc import Callable
from typing import Any

import pytest

import snakeden
from snakeden._bench import _chaos_load, _chaos_procs
from snakeden._bench.chaos_worker import DIE_AFTER_HELLO_ENV
from tests.chaos.invariants import check_pool
from tests.conftest import run

WORKER = _chaos_procs.WORKER


def _reaped(start_method: str) -> bool:
    # A forked worker's exit reaches the host from the template, once the template has reaped
    # it; a spawned worker's through a pidfd, as soon as it exits.
    return start_method == "fork"


async def _started(target: str = WORKER, **options: Any) -> _chaos_load.AsyncFront:
    front = _chaos_load.AsyncFront(**options)
    await front.start(target)
    return front


async def _close(front: _chaos_load.AsyncFront) -> None:
    problem = await front.close(_chaos_procs.CLOSE_BOUND)
    assert problem is None, problem


def _our_read_end(worker_pid: int, worker_fd: int) -> int:
    """Our fd for the read end of the pipe whose write end is ``worker_fd`` in the worker."""
    inode = os.stat(f"/proc/{worker_pid}/fd/{worker_fd}").st_ino
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as f:
                flags = int(next(x for x in f if x.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue
        if stat.S_ISFIFO(st.st_mode) and st.st_ino == inode and flags & os.O_ACCMODE == 0:
            return int(name)
    raise AssertionError(f"no fd of ours reads the pipe of fd {worker_fd} of {worker_pid}")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_dying_after_its_reply_is_not_handed_to_the_queued_caller(
    start_method: str,
) -> None:
    """Bug 1: a worker answers, the pool hands it to the caller queued behind, and it dies before
    that caller writes its call. The queued call provably never ran: it must be re-dispatched to
    the replacement (not fail with an AssertionError, leak the lease, and hang close())."""

    async def body() -> None:
        # pipeline=1: the second call waits in the pool's queue (with pipelining it would wait
        # in the worker's pipe, and go elsewhere by the begun slot: tests/test_pipelining.py).
        front = await _started(size=1, start_method=start_method, pipeline=1)
        pool = front.p
        try:
            (pid,) = pool.worker_pids()
            first = asyncio.ensure_future(pool.call("work_then_die", 1, 100.0))
            queued = asyncio.ensure_future(pool.call("echo", "queued"))
            await asyncio.sleep(0)  # a yield: the first call is sent, the second queues
            assert pool.stats().queued == 1
            # Hold the loop until the worker has answered and died (100 ms after answering):
            # its reply, its end of file and its exit all wait for the loop's next turn.
            assert _chaos_procs.wait_exit(pid, 30, reaped=_reaped(start_method))
            assert await first == [pid, 1]
            assert await asyncio.wait_for(queued, 30) == "queued"
            await pool.wait_ready(timeout=30)
            check_pool(pool, quiescent=True, size=1)
        finally:
            await _close(front)

    run(body())


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_dying_right_after_hello_is_replaced(
    start_method: str, tmp_path: pathlib.Path
) -> None:
    """Bug 2: a replacement says HELLO and dies before the pool has put it in service. The pool
    must notice and start another (not keep a dead worker as ready and never replace it)."""
    flag = tmp_path / "die-after-hello"
    log = _chaos_procs.EventLog()
    dying: list[int] = []

    def on_event(event: snakeden.WorkerEvent) -> None:
        log(event)
        if (
            event.kind == "started"
            and not dying
            and event.pid is not None
            and (flag.exists() or pathlib.Path(f"{flag}.{event.pid}").exists())
        ):
            dying.append(event.pid)
            # This runs on the pool's loop: hold it until the new worker (which takes the flag
            # in its set-up) has said HELLO and died, 100 ms later.
            _chaos_procs.wait_exit(event.pid, 30, reaped=_reaped(start_method))

    async def body() -> None:
        front = await _started(
            target=f"{WORKER}:DiesAfterHello",
            size=2,
            start_method=start_method,
            env={DIE_AFTER_HELLO_ENV: str(flag)},
            on_event=on_event,
        )
        pool = front.p
        try:
            first = set(pool.worker_pids())
            flag.touch()
            os.kill(min(first), signal.SIGKILL)

            def replaced(evs: list[snakeden.WorkerEvent]) -> bool:
                gone = first | set(dying)
                return any(e.kind == "ready" and e.pid not in gone for e in evs)

            assert await log.wait_for_async(replaced, 10), (
                f"the worker that died right after its HELLO ({dying}) was never replaced; "
                f"events: {[(e.kind, e.pid) for e in log.snapshot()]}"
            )
            assert not flag.exists() and dying
            await pool.wait_ready(timeout=30)
            got = await asyncio.wait_for(
                asyncio.gather(*(pool.call("echo", i) for i in range(20))), 30
            )
            assert got == list(range(20))
            check_pool(pool, quiescent=True, size=2)
        finally:
            await _close(front)

    run(body())


def test_cancel_in_the_reply_loop_turn_keeps_the_healthy_worker() -> None:
    """Bug 3: the caller is cancelled in the very loop turn its reply arrives in. The worker
    answered: it is healthy and must be given back (not killed after cancel_grace)."""

    async def body() -> None:
        log = _chaos_procs.EventLog()
        front = await _started(size=1, cancel_grace=2.0, on_event=log)
        pool = front.p
        try:
            (pid,) = pool.worker_pids()
            _, wfd = await pool.call("fds")
            reply_pipe = _our_read_end(pid, wfd)
            task = asyncio.ensure_future(pool.call("echo", "late"))
            await asyncio.sleep(0)  # a yield: the call is sent
            # Hold the loop until the reply is in our pipe, unread...
            poller = select.poll()
            poller.register(reply_pipe, select.POLLIN)
            assert poller.poll(30_000), "the worker never answered"
            # ...then cancel the caller first thing in the next turn, which reads the reply.
            asyncio.get_running_loop().call_soon(task.cancel)
            with pytest.raises(asyncio.CancelledError):
                await task
            again = await asyncio.wait_for(pool.call("getpid"), 30)
            assert again == pid, (
                f"the worker (pid {pid}) had answered, yet it was killed and replaced by {again}: "
                f"{[(e.kind, e.detail) for e in log.snapshot() if e.kind == 'crashed']}"
            )
            assert log.count("crashed") == 0
            check_pool(pool, quiescent=True, size=1)
        finally:
            await _close(front)

    run(body())


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_call_written_to_a_worker_already_dead_is_redispatched(start_method: str) -> None:
    """Bug 5: an idle worker dies and the next call is written to it before the pool has seen
    the exit (a broken pipe). That call never ran: it must be re-dispatched to the replacement
    and succeed, not fail with WorkerCrashed."""

    async def body() -> None:
        front = await _started(size=1, start_method=start_method)
        pool = front.p
        try:
            (pid,) = pool.worker_pids()
            os.kill(pid, signal.SIGKILL)
            assert _chaos_procs.wait_exit(pid, 30)  # the loop is held: the pool has not seen it
            # Awaited directly, the call takes the dead worker and writes to it at once.
            assert await pool.call("echo", "redispatched") == "redispatched"
            await pool.wait_ready(timeout=30)
            assert pid not in pool.worker_pids()
            check_pool(pool, quiescent=True, size=1)
        finally:
            await _close(front)

    run(body())


def test_sync_call_to_a_worker_already_dead_is_redispatched() -> None:
    """Bug 5 on the thread front: an idle worker dies while the supervisor thread is slow to
    notice, and this thread's next call is written to the dead worker. It never ran: it must be
    re-dispatched to the replacement and succeed."""
    log = _chaos_procs.EventLog()
    with snakeden.SyncPool(WORKER, size=1, on_event=log) as pool:
        for i in range(3):
            (pid,) = pool.worker_pids()
            release = _stall_supervisor(pool)
            try:
                os.kill(pid, signal.SIGKILL)
                assert _chaos_procs.wait_exit(pid, 30)  # the supervisor is held: it has not seen it
                result: list[Any] = []
                caller = threading.Thread(
                    target=lambda i=i, out=result: out.append(pool.call("echo", i))
                )
                caller.start()
                # It took the dead worker, found it dead before writing, and now waits for the
                # replacement, which the held supervisor cannot start yet.
                assert _until(lambda i=i: pool.stats().calls_redispatched == i + 1)
            finally:
                release.set()
            caller.join(60)
            assert result == [i]

            def noticed(evs: list[snakeden.WorkerEvent], pid: int = pid) -> bool:
                return any(e.kind == "crashed" and e.pid == pid for e in evs)

            assert log.wait_for(noticed, 30)
            pool.wait_ready(timeout=30)
        check_pool(pool, quiescent=True, size=1)


def _until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    """A bounded poll of state that another thread changes with no event to wait on."""
    never = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if cond():
            return True
        never.wait(0.005)
    return cond()


def _stall_supervisor(pool: snakeden.SyncPool) -> threading.Event:
    """Hold the SyncPool's supervisor loop (as on an overloaded machine) until the returned
    event is set: the injected fault, released by the test when its window has been used."""
    release = threading.Event()
    began = threading.Event()

    def stall() -> None:
        began.set()
        release.wait(60)

    pool._loop.call_soon_threadsafe(stall)
    assert began.wait(30)
    return release
