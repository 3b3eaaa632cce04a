"""Pipelining (``pipeline=4`` here; off by default): calls waiting in a busy worker's pipe
behind the call it runs.

A worker runs its calls one at a time and notes each one it begins, so when it dies (a crash, a
timeout) the calls behind the running one provably never began: they run on another worker and
only the running call fails. A call cancelled while it waits is skipped, and the call ahead of
it is not disturbed. The pool's clock is frozen here, so that a call always may queue behind the
running one (in use, only behind one that began less than ``BEHIND_LIMIT`` ago).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import tempfile

import pytest

import snakeden
from tests.conftest import run
from tests.rendezvous import Rendezvous, held_calls

FAULTS = "tests.workers.faults"


def frozen() -> float:
    return 0.0


async def _queued_behind(pool: snakeden.Pool, log: pathlib.Path, n: int) -> list[asyncio.Task]:
    """``n`` calls and a getpid sent behind the running one: in the worker's pipe
    (pipeline=4 holds them all), not in the pool's queue."""
    calls = [asyncio.create_task(pool.call("record", str(log), f"b{i}")) for i in range(n)]
    calls.append(asyncio.create_task(pool.call("getpid")))
    await asyncio.sleep(0)  # each task runs up to its send
    s = pool.stats()
    assert (s.queued, s.in_flight) == (0, n + 2)
    return calls


def test_a_crash_fails_only_the_running_call_and_those_behind_it_run_elsewhere() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag, log = Rendezvous(tmp), pathlib.Path(tmp, "log")
            release = os.path.join(tmp, "release")
            os.mkfifo(release)
            async with snakeden.Pool(FAULTS, size=1, clock=frozen, pipeline=4) as pool:
                head = asyncio.create_task(pool.call("exit_when_told", str(flag), release))
                victim = int(await flag.wait_async())
                behind = await _queued_behind(pool, log, 2)
                await asyncio.to_thread(pathlib.Path(release).write_text, "x")
                with pytest.raises(snakeden.WorkerCrashed, match="exit_when_told"):
                    await head
                *tokens, pid = await asyncio.gather(*behind)
                assert tokens == ["b0", "b1"] and pid != victim
                assert sorted(log.read_text().split()) == ["b0", "b1"]  # once each
                s = pool.stats()
                assert s.calls_crashed == 1 and s.calls_redispatched == 3 and s.calls_ok == 3

    run(body())


def test_a_timeout_fails_only_the_running_call_and_those_behind_it_run_elsewhere() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag, log = Rendezvous(tmp), pathlib.Path(tmp, "log")
            async with snakeden.Pool(FAULTS, size=1, clock=frozen, pipeline=4) as pool:
                head = asyncio.create_task(pool.call("block", str(flag), 3600, timeout=1.0))
                victim = int(await flag.wait_async())
                behind = await _queued_behind(pool, log, 2)
                with pytest.raises(snakeden.CallTimeout):
                    await head
                *tokens, pid = await asyncio.gather(*behind)
                assert tokens == ["b0", "b1"] and pid != victim
                assert sorted(log.read_text().split()) == ["b0", "b1"]
                s = pool.stats()
                assert s.calls_timed_out == 1 and s.calls_redispatched == 3

    run(body())


def test_a_call_cancelled_behind_another_is_skipped_and_the_running_one_goes_on() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag, log = Rendezvous(tmp), pathlib.Path(tmp, "log")
            release = os.path.join(tmp, "release")
            os.mkfifo(release)
            # The running call is held (a FIFO) past cancel_grace: waiting behind it is no
            # reason to kill the worker.
            async with snakeden.Pool(
                FAULTS, size=1, clock=frozen, cancel_grace=0.2, pipeline=4
            ) as pool:
                head = asyncio.create_task(pool.call("block_until", str(flag), release))
                victim = int(await flag.wait_async())
                dropped = asyncio.create_task(pool.call("record", str(log), "dropped"))
                kept = asyncio.create_task(pool.call("record", str(log), "kept"))
                await asyncio.sleep(0)  # a yield: both are sent behind the running call
                dropped.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await dropped
                # Three times cancel_grace on: the held call still runs (no kill for the call
                # that was behind it). A slow machine can only make this pass, never fail.
                done, _ = await asyncio.wait({head}, timeout=0.6)
                assert not done
                await asyncio.to_thread(pathlib.Path(release).write_text, "x")
                assert await head is None
                assert await kept == "kept"
                assert await pool.call("getpid") == victim  # the same worker throughout
                assert log.read_text().split() == ["kept"]  # the cancelled call never ran
                s = pool.stats()
                assert s.restarts == 0 and s.calls_cancelled == 1 and s.in_flight == 0

    run(body())


def test_large_results_of_calls_in_one_pipe_arrive_whole() -> None:
    """Shared-memory regions hold one message: a call sent behind another is answered by pipe
    (NO_REGION), while the first may answer through the region."""

    async def body() -> None:
        async with snakeden.Pool(FAULTS, size=1, clock=frozen, pipeline=4) as pool:
            payloads = [bytes([i]) * (256 * 1024 + i) for i in range(6)]
            got = await asyncio.gather(*(pool.call("echo", p) for p in payloads))
            assert got == payloads
            assert pool.stats().calls_ok == 6

    run(body())


def _inflight(pool: snakeden.Pool) -> dict[int | None, int]:
    """Worker pid -> calls in flight on it, from the pool's own books."""
    return {w.pid: w.inflight for w in pool._core.checkout.workers.values()}  # type: ignore[union-attr]


def test_a_call_behind_one_that_waits_for_it_is_taken_back_by_a_worker_that_comes_free() -> None:
    """A barrier across calls: the call a worker runs waits for the call queued behind it. The
    first worker to come free with nobody queued takes that call back, so it runs there and both
    finish; without the take-back they would wait for each other for ever. It runs once: the
    worker it was taken from skips it when it gets there."""

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            log = pathlib.Path(tmp, "log")
            flags, releases = held_calls(tmp, 2)
            async with snakeden.Pool(FAULTS, size=2, clock=frozen, pipeline=2) as pool:
                held = [
                    asyncio.create_task(pool.call("block_until", str(f), r))
                    for f, r in zip(flags, releases, strict=True)
                ]
                pids = [int(await f.wait_async()) for f in flags]
                filler = asyncio.create_task(pool.call("getpid"))  # fills one worker's pipe
                await asyncio.sleep(0)  # a yield: the task runs up to its send
                full = next(pid for pid, n in _inflight(pool).items() if n == 2)
                j = pids.index(full)
                k = 1 - j
                # The only worker with room is the one whose running call waits for this one.
                barrier = asyncio.create_task(
                    pool.call("record_and_release", str(log), "ran", releases[k])
                )
                await asyncio.sleep(0)
                assert _inflight(pool) == {pids[0]: 2, pids[1]: 2}
                await asyncio.to_thread(pathlib.Path(releases[j]).write_text, "x")
                assert await asyncio.wait_for(barrier, 60) == pids[j]  # ran on the freed one
                await asyncio.wait_for(asyncio.gather(*held), 60)
                assert await filler == pids[j]
                s = pool.stats()
                assert s.calls_taken_back == 1 and s.restarts == 0 and s.calls_ok == 4
                assert sorted(pool.worker_pids()) == sorted(pids)
            # Closed: the worker it was taken from has read it (before SHUTDOWN) and skipped it.
            assert log.read_text().split() == ["ran"]

    run(body())


def test_calls_behind_a_call_that_runs_long_queue_again_ahead_of_later_calls() -> None:
    """Once the running call is older than BEHIND_LIMIT (the injected clock moves on), the calls
    waiting behind it that the worker has not begun are taken back and queue again ahead of the
    calls that came after them: they run first on the next worker to come free."""
    now = [0.0]

    async def body() -> None:
        taken: list[str] = []
        swept = asyncio.Event()

        def on_event(e: snakeden.WorkerEvent) -> None:
            if e.kind == "taken_back":
                taken.append(e.detail)
                if len(taken) == 2:
                    swept.set()

        with tempfile.TemporaryDirectory() as tmp:
            log = pathlib.Path(tmp, "log")
            flags, releases = held_calls(tmp, 2)
            async with snakeden.Pool(
                FAULTS, size=2, clock=lambda: now[0], pipeline=2, on_event=on_event
            ) as pool:
                held = [
                    asyncio.create_task(pool.call("block_until", str(f), r))
                    for f, r in zip(flags, releases, strict=True)
                ]
                pids = [int(await f.wait_async()) for f in flags]
                behind = [
                    asyncio.create_task(pool.call("record", str(log), f"behind{i}"))
                    for i in range(2)
                ]
                await asyncio.sleep(0)  # a yield: each task runs up to its send
                assert _inflight(pool) == {pids[0]: 2, pids[1]: 2}
                later = asyncio.create_task(pool.call("record", str(log), "later"))
                await asyncio.sleep(0)
                assert pool.stats().queued == 1
                now[0] = 1.0  # both running calls are old now
                await asyncio.wait_for(swept.wait(), 60)
                assert taken == ["1 call(s)", "1 call(s)"]
                await asyncio.to_thread(pathlib.Path(releases[0]).write_text, "x")
                assert await asyncio.wait_for(asyncio.gather(*behind, later), 60) == [
                    "behind0",
                    "behind1",
                    "later",
                ]
                assert log.read_text().split()[-1] == "later"  # after both that came before it
                await asyncio.to_thread(pathlib.Path(releases[1]).write_text, "x")
                await asyncio.wait_for(asyncio.gather(*held), 60)
                s = pool.stats()
                assert s.calls_taken_back == 2 and s.restarts == 0 and s.calls_ok == 5
            # Closed: each ran once (the workers they were taken from skipped them).
            assert sorted(log.read_text().split()) == ["behind0", "behind1", "later"]

    run(body())
