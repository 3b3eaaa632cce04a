"""A worker module that declares ``snakeden.concurrency(4)`` serves four calls at once: proved
by a barrier in the worker that only opens with four calls inside, not by timing."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import pathlib

import pytest

import snakeden
from tests.conftest import run
from tests.rendezvous import Rendezvous

W = "tests.workers.many_at_once"


def test_four_calls_in_flight_on_one_worker_on_the_asyncio_front() -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1) as pool:
            assert pool.stats().slots == 4
            # Each returns only once all four are inside: one worker, four in flight.
            got = await asyncio.gather(*(pool.call("meet", 60) for _ in range(4)))
            assert sorted(got) == [0, 1, 2, 3]
            got = await asyncio.gather(*(pool.call("ameet", 60) for _ in range(4)))
            assert sorted(got) == [0, 1, 2, 3]
            assert await pool.call("most") == 4
            s = pool.stats()
            assert (s.calls_ok, s.in_flight, s.busy, s.restarts) == (9, 0, 0, 0)

    run(body())


def test_four_calls_in_flight_on_one_worker_on_the_thread_front() -> None:
    with snakeden.SyncPool(W, size=1) as pool, cf.ThreadPoolExecutor(4) as threads:
        got = list(threads.map(lambda _: pool.call("meet", 60), range(4)))
        assert sorted(got) == [0, 1, 2, 3]
        assert list(pool.stream("count", 5)) == [0, 1, 2, 3, 4]
        assert pool.stats().slots == 4


def test_stats_count_busy_slots(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1) as pool:
            with Rendezvous(tmp_path) as running:
                slow = [asyncio.create_task(pool.call("slow_poll", str(running))) for _ in range(4)]
                seen = ""
                while len(seen) < 4:  # each call writes one "x" once it runs in the worker
                    seen += await running.wait_async()
            s = pool.stats()
            assert (s.in_flight, s.busy, s.slots) == (4, 1, 4)
            fifth = asyncio.create_task(pool.call("echo", 5))
            slow[0].cancel()  # frees a slot for the fifth
            assert await fifth == 5
            for t in slow:
                t.cancel()
            await asyncio.gather(*slow, return_exceptions=True)

    run(body())


def test_a_crash_fails_every_call_in_flight_on_that_worker(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1) as pool:
            pid = await pool.call("pid")
            running = Rendezvous(tmp_path)
            slow = asyncio.create_task(pool.call("slow_poll", str(running)))
            # In flight for sure before the crash: sent after it, it would never reach the dead
            # worker and would rightly run on the replacement instead.
            await running.wait_async()
            running.close()
            with pytest.raises(snakeden.WorkerCrashed, match="exited with code 7"):
                await pool.call("crash")
            with pytest.raises(snakeden.WorkerCrashed):
                await slow
            assert await pool.call("pid") != pid

    run(body())


def test_a_timeout_stops_that_call_only(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1, cancel_grace=60) as pool:
            pid = await pool.call("pid")
            with Rendezvous(tmp_path) as running:
                other = asyncio.create_task(pool.call("slow_poll", str(running)))
                await running.wait_async()
                with pytest.raises(snakeden.CallTimeout, match="serves its other calls on"):
                    await pool.call("slow_poll", timeout=0.3)
            assert not other.done()  # the call beside it runs on, on the same worker
            assert await pool.call("pid") == pid
            other.cancel()
            with pytest.raises(asyncio.CancelledError):
                await other
            assert await pool.call("echo", os.getpid()) == os.getpid()

    run(body())
