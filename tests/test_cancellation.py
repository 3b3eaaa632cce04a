"""Cancellation reaches the command in the worker: an async def command gets CancelledError at its
next await, a sync one sees ``snakeden.context().cancelled``; one that ignores it is killed after
``cancel_grace``. The caller's own cancellation is re-raised untouched."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

import snakeden
from tests.conftest import run
from tests.rendezvous import Rendezvous

W = "tests.workers.streams"


async def _cancel_mid_call(pool: snakeden.Pool, started: Rendezvous, *call: Any) -> None:
    task = asyncio.create_task(pool.call(*call))
    await started.wait_async()  # the command is running in the worker
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # the caller's own cancellation, never wrapped


@pytest.mark.parametrize("command", ["await_forever", "check_cancel"])
def test_a_cancelled_caller_stops_the_command_and_the_worker_serves_on(
    tmp_path: pathlib.Path, command: str
) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1, cancel_grace=60) as pool:
            pid = await pool.call("pid")
            started, done = Rendezvous(tmp_path, "started"), Rendezvous(tmp_path, "done")
            with started, done:
                await _cancel_mid_call(pool, started, command, str(started), str(done))
                # async def: CancelledError at its await; sync: CallCancelled from the check.
                assert await done.wait_async() == "cancelled"
            assert await pool.call("pid") == pid  # not killed: it stopped in time
            assert await pool.call("echo", 3) == 3
            assert pool.stats().calls_cancelled == 1

    run(body())


def test_a_sync_command_polling_the_flag_returns_early(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1, cancel_grace=60) as pool:
            pid = await pool.call("pid")
            with Rendezvous(tmp_path) as started:
                await _cancel_mid_call(pool, started, "poll_cancel", str(started))
            assert await pool.call("pid") == pid
            ctx = await pool.call("whoami")
            assert ctx[1:] == ["whoami", False]

    run(body())


def test_a_command_ignoring_cancellation_is_killed_after_the_grace(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1, cancel_grace=0.5) as pool:
            pid = await pool.call("pid")
            with Rendezvous(tmp_path) as started:
                await _cancel_mid_call(pool, started, "ignore_cancel", str(started))
            assert await pool.call("pid") != pid  # killed and replaced
            assert pool.stats().restarts == 1

    run(body())


def test_cancellation_reaches_a_call_on_a_concurrent_worker() -> None:
    async def body() -> None:
        async with snakeden.Pool("tests.workers.many_at_once", size=1, cancel_grace=60) as pool:
            pid = await pool.call("pid")
            slow = asyncio.create_task(pool.call("slow_poll"))
            assert await pool.call("echo", 1) == 1  # served beside it
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert await pool.call("pid") == pid

    run(body())
