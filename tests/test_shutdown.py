"""Closing a pool drains or fails pending calls and leaves no process behind, grandchildren
included (the autouse fixture checks the process table after every test)."""

from __future__ import annotations

import asyncio
import os
import tempfile

import psutil
import pytest

import snakeden
from tests.conftest import run, snakeden_processes
from tests.rendezvous import Rendezvous

EX = "snakeden.examples"
FAULTS = "tests.workers.faults"


def test_close_drains_in_flight_and_queued_calls() -> None:
    async def body() -> None:
        pool = await snakeden.Pool(EX, size=2).start()
        calls = [asyncio.create_task(pool.call("work", 2000)) for _ in range(20)]
        await asyncio.sleep(0)
        await pool.close()
        assert len({c.result() for c in calls}) == 1  # all finished, same digest
        assert pool.stats().state == "closed"

    run(body())


def test_close_cancel_pending_fails_queued_calls_with_closed_error() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp, Rendezvous(tmp) as flag:
            # pipeline=1: the echo calls wait in the pool's queue (in a worker's pipe they would
            # be in flight, and close() lets calls in flight finish).
            pool = await snakeden.Pool(FAULTS, size=1, shutdown_timeout=0.5, pipeline=1).start()
            running = asyncio.create_task(pool.call("block", str(flag), 3, timeout=30))
            await flag.wait_async()
            queued = [asyncio.create_task(pool.call("echo", i)) for i in range(5)]
            await asyncio.sleep(0)
            closing = asyncio.create_task(pool.close(cancel_pending=True))
            for q in queued:
                with pytest.raises(snakeden.PoolClosed):
                    await q
            await running  # the in-flight call was drained, not killed
            await closing

    run(body())


def test_grandchildren_die_with_the_pool() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=1, shutdown_timeout=1.0) as pool:
            child = await pool.call("spawn_child", 3600)
            assert psutil.pid_exists(child)
            assert child in {p.pid for p in snakeden_processes()}
        proc = psutil.Process(child) if psutil.pid_exists(child) else None
        if proc is not None:
            psutil.wait_procs([proc], timeout=30)
            assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE

    run(body())


def test_worker_that_ignores_shutdown_is_terminated_then_killed() -> None:
    async def body() -> None:
        pool = await snakeden.Pool(EX, size=1, shutdown_timeout=0.2).start()
        pid = pool.worker_pids()[0]
        # The worker is busy in C code: it cannot read SHUTDOWN; close() must escalate.
        task = asyncio.create_task(pool.call("hang_in_c", 3600))
        await asyncio.sleep(0)
        await asyncio.wait_for(pool.close(timeout=0.5), 60)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        with pytest.raises(snakeden.WorkerCrashed):
            await task

    run(body())


def test_sync_pool_close_leaves_nothing() -> None:
    pool = snakeden.SyncPool(EX, size=3)
    pids = pool.worker_pids()
    assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
    pool.shutdown()
    assert not snakeden_processes()
    assert os.getpid() not in pids
