"""Calls back to the host: worker code calls functions the host registered, values and errors
travel both ways, and a host function that calls the pool cannot deadlock it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import snakeden
from tests.conftest import run

W = "tests.workers.streams"
MANY = "tests.workers.many_at_once"


async def _aget(d: dict[str, Any], key: str) -> Any:
    await asyncio.sleep(0)  # a real await in an async host function (not a wait for anything)
    return d[key]


def _host_functions() -> dict[str, Any]:
    data = {"a": [1, (2, 3)], "b": {"x": b"\x00"}}
    return {
        "get": lambda key: data[key],
        "aget": lambda key: _aget(data, key),
        "add": lambda a, b=0: a + b,
    }


def test_values_round_trip_from_sync_and_async_commands_on_both_fronts() -> None:
    fns = _host_functions()

    async def aget(key: str) -> Any:
        return await fns["aget"](key)

    async def body() -> None:
        async with snakeden.Pool(W, size=1, host_functions={**fns, "aget": aget}) as pool:
            assert await pool.call("ask", "get", "a") == [1, (2, 3)]
            assert await pool.call("aask", "get", "b") == {"x": b"\x00"}
            assert await pool.call("ask", "aget", "a") == [1, (2, 3)]  # async host function
            assert await pool.call("ask", "add", 2, b=5) == 7
            pool.register("twice", lambda x: 2 * x)
            assert await pool.call("aask", "twice", 21) == 42

    run(body())
    with snakeden.SyncPool(W, size=1, host_functions={**fns, "aget": aget}) as pool:
        assert pool.call("ask", "get", "a") == [1, (2, 3)]
        assert pool.call("ask", "aget", "b") == {"x": b"\x00"}
        assert pool.call("aask", "add", 1, 2) == 3


def test_errors_travel_both_ways() -> None:
    def boom(msg: str) -> None:
        raise RuntimeError(msg)

    async def body() -> None:
        fns = {**_host_functions(), "boom": boom}
        async with snakeden.Pool(W, size=1, host_functions=fns) as pool:
            # A builtin exception arrives in the worker as its own type.
            assert await pool.call("ask_catching", "get", "missing") == "KeyError missing"
            assert await pool.call("ask_catching", "nope") == (
                "LookupError: no host function 'nope' is registered (registered: add, aget, "
                "boom, get); pass host_functions={...} to the pool or call pool.register()"
            )
            # Not caught in the worker: the caller gets it, from the command's side.
            with pytest.raises(RuntimeError, match="from the host"):
                await pool.call("ask", "boom", "from the host")
            assert await pool.call("echo", 1) == 1

    run(body())
    with (
        snakeden.SyncPool(W, size=1, host_functions={"boom": boom}) as pool,
        pytest.raises(RuntimeError, match="sync host"),
    ):
        pool.call("ask", "boom", "sync host")


def test_a_stream_reports_progress_through_the_host() -> None:
    seen: list[int] = []

    async def body() -> None:
        async with snakeden.Pool(W, size=1, host_functions={"seen": seen.append}) as pool:
            got = [x async for x in pool.stream("progress", 50)]
            assert got == list(range(50))
            assert seen == list(range(50))

    run(body())
    seen.clear()
    with snakeden.SyncPool(W, size=1, host_functions={"seen": seen.append}) as pool:
        assert list(pool.stream("progress", 20)) == list(range(20))
        assert seen == list(range(20))


def test_a_host_function_calling_a_one_worker_pool_fails_fast_instead_of_deadlocking() -> None:
    async def body() -> None:
        pool = snakeden.Pool(W, size=1)

        async def nested(x: int) -> Any:
            return await pool.call("echo", x)  # the only worker is busy with our caller

        pool.register("nested", nested)
        async with pool:
            msg = await pool.call("ask_catching", "nested", 1)
            # The host's HostCallDeadlock, as the worker's command saw it (a RemoteError there).
            assert "HostCallDeadlock: host function 'nested' called the pool" in msg
            assert await pool.call("echo", 2) == 2

    run(body())

    def sync_nested(x: int) -> Any:
        return sync_pool.call("echo", x)

    with snakeden.SyncPool(W, size=1, host_functions={"nested": sync_nested}) as sync_pool:
        assert "HostCallDeadlock" in sync_pool.call("ask_catching", "nested", 1)
        assert sync_pool.call("echo", 3) == 3


def test_a_host_function_may_call_the_pool_when_a_slot_is_free() -> None:
    async def body() -> None:
        pool = snakeden.Pool(MANY, size=1)

        async def nested(x: int) -> Any:
            return await pool.call("echo", x + 1)  # another slot of the same worker

        pool.register("nested", nested)
        async with pool:
            assert await pool.call("ask", "nested", 1) == 2
            assert await pool.call("aask", "nested", 2) == 3

    run(body())

    def sync_nested(x: int) -> Any:
        return sync_pool.call("echo", x + 1)

    with snakeden.SyncPool(MANY, size=1, host_functions={"nested": sync_nested}) as sync_pool:
        assert sync_pool.call("ask", "nested", 1) == 2
