"""The asyncio Pool's everyday behaviour, on real worker processes."""

from __future__ import annotations

import asyncio
import math
import operator

import pytest

import snakeden
from tests.conftest import run

EX = "snakeden.examples"


def test_calls_commands_refs_and_async_commands() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=2) as pool:
            assert await pool.call("add", 2, 3) == 5
            assert await pool.call("async_add", 2, 3) == 5
            assert await pool.call("echo", {"a": [1, b"x", None]}) == {"a": [1, b"x", None]}
            assert await pool.call(math.factorial, 20) == math.factorial(20)
            assert await pool.call(operator.add, "a", "b") == "ab"

    run(body())


def test_by_reference_pool_without_module() -> None:
    async def body() -> None:
        async with snakeden.Pool(size=1) as pool:
            assert await pool.call(math.gcd, 12, 18) == 6
            with pytest.raises(snakeden.UnknownCommand, match="serves: \\(none"):
                await pool.call("add", 1, 2)

    run(body())


def test_unknown_command_lists_what_the_worker_serves() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=1) as pool:
            with pytest.raises(snakeden.UnknownCommand) as info:
                await pool.call("ad", 1, 2)
            assert "'ad'" in str(info.value)
            assert "add" in info.value.available and "echo" in info.value.available
            assert await pool.call("add", 1, 2) == 3

    run(body())


def test_remote_exception_has_type_message_and_traceback_as_cause() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=1) as pool:
            with pytest.raises(snakeden.RemoteError) as info:
                await pool.call("fail", "it broke")
            err = info.value
            assert isinstance(err, ValueError)  # except ValueError works as for a local call
            assert str(err) == "it broke"
            assert err.type_name == "ValueError"
            assert err.remote_message == "it broke"
            assert isinstance(err.__cause__, snakeden.RemoteTraceback)
            assert "examples.py" in err.remote_traceback
            assert "raise ValueError(message)" in err.remote_traceback
            assert await pool.call("add", 1, 1) == 2
            assert pool.stats().calls_failed == 1

    run(body())


def test_bad_arguments_are_the_callers_fault() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=1) as pool:
            with pytest.raises(snakeden.BadCall, match="add"):
                await pool.call("add", 1)
            assert await pool.call("add", 1, 1) == 2

    run(body())


def test_unserialisable_argument_fails_before_anything_is_sent() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=1) as pool:
            with pytest.raises(snakeden.SerializationError, match="Nothing was sent"):
                await pool.call("echo", {1, 2, 3})
            with pytest.raises(snakeden.SerializationError, match="serializer='pickle'"):
                await pool.call("echo", object())
            with pytest.raises(ValueError, match="lambda"):
                await pool.call(lambda: 1)
            stats = pool.stats()
            assert stats.calls_ok == 0 and stats.calls_failed == 0
            assert await pool.call("echo", 1) == 1

    run(body())


def test_unserialisable_result_is_a_clear_error_and_worker_survives() -> None:
    async def body() -> None:
        async with snakeden.Pool("tests.workers.faults", size=1) as pool:
            pid = await pool.call("getpid")
            with pytest.raises(snakeden.SerializationError, match="could not be sent"):
                await pool.call("result_fault", "")
            assert await pool.call("getpid") == pid

    run(body())


def test_pickle_serializer_carries_python_objects() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=1, serializer="pickle") as pool:
            assert await pool.call("echo", {1, 2}) == {1, 2}
            assert await pool.call("echo", (1, 2j)) == (1, 2j)

    run(body())


def test_oversized_argument_and_result() -> None:
    async def body() -> None:
        # By pipe only: shared memory (test_shm.py) lifts the frame limit for large buffers.
        async with snakeden.Pool(EX, size=1, max_frame_size=64 * 1024, shm_threshold=None) as pool:
            with pytest.raises(snakeden.PayloadTooLarge, match="maximum frame size"):
                await pool.call("echo", b"x" * 100_000)
            # The worker builds a result over the limit: an encode error, the worker lives on.
            with pytest.raises(snakeden.SerializationError, match="maximum frame size"):
                await pool.call("work_bytes", 100_000)
            assert await pool.call("echo", b"y" * 1000) == b"y" * 1000

    run(body())


def test_class_target_runs_setup_once_per_worker_and_keeps_state() -> None:
    async def body() -> None:
        async with snakeden.Pool("snakeden.examples:Counter", size=1) as pool:
            assert [await pool.call("incr") for _ in range(3)] == [1, 2, 3]
            assert await pool.call("incr", 10) == 13

    run(body())


def test_map_keeps_order_plain_and_batched() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=2) as pool:
            items = list(range(257))
            assert await pool.map("echo", items) == items
            assert await pool.map("echo", items, chunksize=16) == items
            pairs = [(i, i) for i in range(50)]
            assert await pool.map("add", pairs, star=True, chunksize=7) == [
                2 * i for i in range(50)
            ]
            with pytest.raises(ValueError) as info:
                await pool.map("fail", ["x"] * 5, chunksize=2)
            assert isinstance(info.value, snakeden.RemoteError)

    run(body())


def test_stats_and_repr() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=2) as pool:
            await asyncio.gather(*(pool.call("add", i, 1) for i in range(40)))
            with pytest.raises(snakeden.RemoteError):
                await pool.call("fail")
            s = pool.stats()
            assert (s.workers, s.ready, s.busy, s.queued, s.starting) == (2, 2, 0, 0, 0)
            assert (s.calls_ok, s.calls_failed, s.calls_crashed, s.calls_timed_out) == (40, 1, 0, 0)
            assert s.call_latency.count == 41 and s.call_latency.p50 > 0
            assert s.call_latency.p50 <= s.call_latency.p99 <= s.call_latency.max
            text = repr(pool)
            assert "snakeden.examples running workers=2 ready=2 busy=0" in text
            assert "ok=40 failed=1" in text
            with pytest.raises(AttributeError):
                s.calls_ok = 3  # type: ignore[misc]
        assert "closed workers=0" in repr(pool)

    run(body())


def test_calls_after_close_are_rejected() -> None:
    async def body() -> None:
        pool = snakeden.Pool(EX, size=1)
        with pytest.raises(snakeden.PoolClosed, match="not started"):
            await pool.call("add", 1, 1)
        await pool.start()
        await pool.close()
        with pytest.raises(snakeden.PoolClosed):
            await pool.call("add", 1, 1)

    run(body())


def test_invalid_configuration_is_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="serializer"):
        snakeden.Pool(EX, serializer="json")
    with pytest.raises(ValueError, match="max_size"):
        snakeden.Pool(EX, size=4, max_size=2)
    with pytest.raises(TypeError):
        snakeden.Pool(EX, sizee=4)


def test_batched_map_runs_each_item_exactly_once_even_when_one_fails(tmp_path: object) -> None:
    import pathlib

    log = pathlib.Path(str(tmp_path), "log")

    async def body() -> None:
        async with snakeden.Pool("tests.workers.faults", size=1) as pool:
            items = [(str(log), f"t{i}") for i in range(10)]
            items[4] = (str(log), 4)  # type: ignore[assignment]  # fails inside the command
            with pytest.raises(TypeError) as info:
                await pool.map("record", items, star=True, chunksize=10)
            assert isinstance(info.value, snakeden.RemoteError)

    run(body())
    assert log.read_text().split() == [f"t{i}" for i in range(10) if i != 4]
