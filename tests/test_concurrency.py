"""Many callers at once: results land in the right place, the queue is bounded and fair, and a
call whose caller gave up while queued never reaches a worker."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
import threading

import pytest

import snakeden
from tests.conftest import run
from tests.rendezvous import Rendezvous

EX = "snakeden.examples"
FAULTS = "tests.workers.faults"


def test_hundreds_of_concurrent_calls_all_correct_and_in_place() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=4) as pool:
            n = 600
            results = await asyncio.gather(*(pool.call("add", i, 1000 * i) for i in range(n)))
            assert results == [1001 * i for i in range(n)]
            # Work really spread over the workers.
            pids = await asyncio.gather(*(pool.call("pid") for _ in range(200)))
            assert set(pids) <= set(pool.worker_pids())
            s = pool.stats()
            assert s.calls_ok == n + 200 and s.busy == 0 and s.queued == 0

    run(body())


def test_hundreds_of_threads_on_a_sync_pool() -> None:
    with snakeden.SyncPool(EX, size=3) as pool:
        results: dict[int, int] = {}
        errors: list[BaseException] = []

        def caller(i: int) -> None:
            try:
                results[i] = pool.call("add", i, i)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert results == {i: 2 * i for i in range(200)}
        assert pool.stats().calls_ok == 200


def test_queue_saturation_fails_at_once_and_loses_nothing_queued() -> None:
    # pipeline=1: calls wait in the pool's queue, never in a busy worker's pipe (the same with
    # pipelining: tests/test_pipelining.py).
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag = Rendezvous(tmp)
            async with snakeden.Pool(FAULTS, size=1, max_queue=3, pipeline=1) as pool:
                blocker = asyncio.create_task(pool.call("block", str(flag), 3600, timeout=60))
                await flag.wait_async()
                queued = [asyncio.create_task(pool.call("echo", i)) for i in range(3)]
                await asyncio.sleep(0)  # each new task runs up to its place in the queue
                assert pool.stats().queued == 3
                with pytest.raises(snakeden.PoolSaturated, match="max_queue=3"):
                    await pool.call("echo", 99)
                assert pool.stats().calls_rejected == 1
                # Free the worker: kill the blocking call's worker via its timeout path.
                blocker.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await blocker
                assert await asyncio.gather(*queued) == [0, 1, 2]

    run(body())


def test_queue_timeout_and_no_call_executed_after_its_caller_gave_up() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag = Rendezvous(tmp)
            log = pathlib.Path(tmp, "executed")
            async with snakeden.Pool(FAULTS, size=1, cancel_grace=0.5, pipeline=1) as pool:
                blocker = asyncio.create_task(pool.call("block", str(flag), 3600))
                await flag.wait_async()
                # Queued callers that give up: by queue timeout, and by cancellation.
                timed = asyncio.create_task(
                    pool.call_with("record", (str(log), "timed-out"), timeout=None)
                )
                cancelled = asyncio.create_task(pool.call("record", str(log), "cancelled"))
                kept = asyncio.create_task(pool.call("record", str(log), "kept"))
                await asyncio.sleep(0)
                assert pool.stats().queued == 3
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                assert pool.stats().queued == 2
                timed.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await timed
                with pytest.raises(snakeden.QueueTimeout, match="never sent"):
                    await _call_with_queue_timeout(pool, str(log))
                # The blocked call's caller gives up too; the worker is reclaimed or replaced.
                blocker.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await blocker
                assert await kept == "kept"
                assert await pool.call("record", str(log), "after") == "after"
                assert log.read_text().split() == ["kept", "after"]

    run(body())


def test_a_plain_queued_call_that_times_out_is_never_sent() -> None:
    """A plain call that queues is written by the hand-off that frees a worker (QueuedCall):
    its queue timeout fails it unsent, and no later hand-off sends it."""

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag = Rendezvous(tmp)
            log = pathlib.Path(tmp, "executed")
            async with snakeden.Pool(FAULTS, size=1, queue_timeout=0.2, cancel_grace=0.5) as pool:
                blocker = asyncio.create_task(pool.call("block", str(flag), 3600))
                await flag.wait_async()
                with pytest.raises(snakeden.QueueTimeout, match="never sent"):
                    await pool.call("record", str(log), "timed-out")
                s = pool.stats()
                assert (s.queued, s.calls_rejected) == (0, 1)
                blocker.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await blocker
            assert not log.exists()

    run(body())


async def _call_with_queue_timeout(pool: snakeden.Pool, log: str) -> object:
    core = pool._core
    assert core is not None
    w, _ = await core.checkout_async(0.2)  # pragma: no cover - must time out
    raise AssertionError(f"got {w}")


def test_sync_queue_timeout_and_cancelled_future_never_runs() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flag = Rendezvous(tmp)
        log = pathlib.Path(tmp, "executed")
        with snakeden.SyncPool(FAULTS, size=1, queue_timeout=0.3, call_timeout=2.0) as pool:
            blocker = pool.submit("block", str(flag), 3600)
            flag.wait()
            with pytest.raises(snakeden.QueueTimeout):
                pool.call("record", str(log), "timed-out")
            later = pool.submit("record", str(log), "cancelled")
            assert later.cancel() or later.done()
            with pytest.raises(snakeden.CallTimeout):
                blocker.result(timeout=60)
            assert pool.call("record", str(log), "after") == "after"
            assert log.read_text().split() == ["after"]


def test_pipelining_keeps_results_in_place_and_accounting_right() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=2, pipeline=8) as pool:
            n = 2000
            results = await asyncio.gather(*(pool.call("add", i, 1) for i in range(n)))
            assert results == [i + 1 for i in range(n)]
            s = pool.stats()
            assert s.calls_ok == n and s.in_flight == 0 and s.busy == 0 and s.ready == 2
            # A crash fails the calls pipelined on that worker (and only those); the pool heals.
            calls = [asyncio.create_task(pool.call("work", 100)) for _ in range(20)]
            with pytest.raises(snakeden.WorkerCrashed):
                await pool.call("crash", "segfault")
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, (str, snakeden.WorkerCrashed)) for o in outcomes)
            await pool.wait_ready(timeout=60)
            assert await pool.map("echo", range(100)) == list(range(100))
            s = pool.stats()
            assert s.in_flight == 0 and s.workers == 2

    run(body())


def test_invalid_pipeline_depth() -> None:
    with pytest.raises(ValueError, match="pipeline"):
        snakeden.Pool(EX, pipeline=0)
