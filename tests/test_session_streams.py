"""Sessions and streams combine: a session's stream runs on the worker holding its state and
sees it, on both fronts; a strict session whose worker died fails its stream loudly."""

from __future__ import annotations

import os
import signal

import pytest

import snakeden
from tests.conftest import run

WORKER = "tests.workers.sessions"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_an_async_session_streams_its_own_state(start_method: str) -> None:
    async def body() -> None:
        async with (
            snakeden.Pool(WORKER, size=2, start_method=start_method) as pool,
            pool.session() as a,
            pool.session() as b,
        ):
            for i in range(3):
                await a.call("put", f"k{i}", i)
            await b.call("put", "other", "b's")
            got = [item async for item in a.stream("items")]
            assert got == [["k0", 0], ["k1", 1], ["k2", 2]]
            assert [item async for item in b.stream("items")] == [["other", "b's"]]
            # A stream stopped early leaves the session serving.
            async with a.stream("items") as s:
                async for _ in s:
                    break
            assert await a.call("get", "k2") == 2

    run(body())


def test_a_sync_session_streams_its_own_state() -> None:
    with snakeden.SyncPool(WORKER, size=2) as pool, pool.session() as s:
        s.call("put", "x", [1, 2])
        s.call("put", "y", None)
        assert list(s.stream("items")) == [["x", [1, 2]], ["y", None]]
        with pool.session() as other:
            assert list(other.stream("items")) == []


def test_a_strict_session_whose_worker_died_fails_its_stream() -> None:
    async def body() -> None:
        async with snakeden.Pool(WORKER, size=2) as pool, pool.session() as s:
            await s.call("put", "a", 1)
            _sid, pid, _keys = await s.call("whoami")
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(snakeden.SessionLost):
                async for _ in s.stream("items"):
                    pass
            assert await pool.call("whoami") is not None  # the pool serves on

    run(body())
