"""Streams (``pool.stream()``) on real worker processes, both fronts: order, flow control, errors,
and every way a reader can stop early leaving a worker that serves the next call right."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import pathlib
import sys
from typing import Any

import psutil
import pytest

import snakeden
from tests.conftest import run
from tests.rendezvous import Rendezvous

W = "tests.workers.streams"
N = 100_000


def test_a_stream_of_100000_items_arrives_in_order_on_both_fronts() -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1) as pool:
            got = [x async for x in pool.stream("count", N)]
            assert got == list(range(N))
            got = [x async for x in pool.stream("acount", N)]  # an async generator
            assert got == list(range(N))
            assert pool.stats().calls_ok == 2

    run(body())
    with snakeden.SyncPool(W, size=1) as pool:
        assert list(pool.stream("count", N)) == list(range(N))
        assert list(pool.stream("acount", 1000)) == list(range(1000))


def test_an_exception_mid_stream_arrives_after_the_items_before_it() -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1) as pool:
            got: list[int] = []
            with pytest.raises(ValueError, match="failed after 3") as info:
                async for x in pool.stream("fail_after", 3):
                    got.append(x)
            assert got == [0, 1, 2]
            assert isinstance(info.value, snakeden.RemoteError)
            assert await pool.call("echo", "next") == "next"

    run(body())
    with snakeden.SyncPool(W, size=1) as pool:
        got = []
        with pytest.raises(ValueError, match="failed after 2"):
            for x in pool.stream("fail_after", 2):
                got.append(x)
        assert got == [0, 1]
        assert pool.call("echo", "next") == "next"


def _closed(text: str) -> int:
    """The worker's generator reached its ``finally``: how many items it had produced."""
    assert text.startswith("closed after "), text
    return int(text.rsplit(maxsplit=1)[-1])


@pytest.mark.parametrize("how", ["break", "aclose", "async-with", "cancel", "timeout", "gc"])
@pytest.mark.parametrize("command", ["endless", "aendless"])
def test_stopping_early_ends_the_stream_in_the_worker(
    tmp_path: pathlib.Path, how: str, command: str
) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1, stream_window=8) as pool:
            pid = await pool.call("pid")
            with Rendezvous(tmp_path) as fifo:
                if how == "timeout":
                    with pytest.raises(snakeden.CallTimeout, match="cancelled in the worker"):
                        async for _ in pool.stream(command, str(fifo), timeout=0.5):
                            pass
                elif how == "cancel":

                    async def reader(seen: asyncio.Event) -> None:
                        async for x in pool.stream(command, str(fifo)):
                            if x == 10:
                                seen.set()

                    seen = asyncio.Event()
                    task = asyncio.create_task(reader(seen))
                    await seen.wait()
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task  # the reader's own cancellation, not wrapped
                elif how == "async-with":
                    async with pool.stream(command, str(fifo)) as items:
                        async for x in items:
                            if x == 10:
                                break
                elif how == "break":
                    async for x in pool.stream(command, str(fifo)):
                        if x == 10:
                            break  # the stream, a temporary, is dropped: that ends it
                else:
                    stream = pool.stream(command, str(fifo))
                    async for x in stream:
                        if x == 10:
                            break
                    if how == "aclose":
                        await stream.aclose()
                    else:
                        del stream
                        gc.collect()
                produced = _closed(await fifo.wait_async())
            if how not in ("timeout", "cancel"):  # the reader stopped at item 10
                assert produced <= 10 + 8 + 1  # the window, and the item being made
            # The same worker, back in the pool, serving the next call right.
            assert await pool.call("echo", [1, 2]) == [1, 2]
            assert await pool.call("pid") == pid
            assert [x async for x in pool.stream("count", 3)] == [0, 1, 2]

    run(body())


@pytest.mark.parametrize("how", ["break-gc", "close", "with", "timeout"])
def test_stopping_early_on_the_thread_front(tmp_path: pathlib.Path, how: str) -> None:
    with snakeden.SyncPool(W, size=1, stream_window=8) as pool:
        pid = pool.call("pid")
        with Rendezvous(tmp_path) as fifo:
            if how == "timeout":
                with pytest.raises(snakeden.CallTimeout):
                    for _ in pool.stream("endless", str(fifo), timeout=0.5):
                        pass
            elif how == "with":
                with pool.stream("endless", str(fifo)) as items:
                    for x in items:
                        if x == 10:
                            break
            else:
                items = pool.stream("endless", str(fifo))
                for x in items:
                    if x == 10:
                        break
                if how == "close":
                    items.close()
                else:
                    del items  # dropped: closed by its finaliser
            _closed(fifo.wait())
        assert pool.call("echo", "x") == "x"
        assert pool.call("pid") == pid
        assert list(pool.stream("count", 3)) == [0, 1, 2]


def test_a_crash_mid_stream_fails_the_iteration_with_worker_crashed() -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1) as pool:
            pid = await pool.call("pid")
            got = []
            with pytest.raises(snakeden.WorkerCrashed, match="died while running 'endless'"):
                async for x in pool.stream("endless"):
                    got.append(x)
                    if x == 5:
                        os.kill(pid, 9)
            assert got[:6] == [0, 1, 2, 3, 4, 5]
            assert await pool.call("echo", 1) == 1  # a replacement serves

    run(body())
    with snakeden.SyncPool(W, size=1) as pool:
        pid = pool.call("pid")
        with pytest.raises(snakeden.WorkerCrashed):
            for x in pool.stream("endless"):
                if x == 5:
                    os.kill(pid, 9)
        assert pool.call("echo", 1) == 1


def test_a_command_that_is_not_a_generator_is_a_bad_call() -> None:
    with snakeden.SyncPool(W, size=1) as pool:
        with pytest.raises(snakeden.BadCall, match="not a generator"):
            list(pool.stream("not_a_generator"))
        with pytest.raises(snakeden.SerializationError, match=r"call it with pool\.stream"):
            pool.call("count", 3)
        assert pool.call("echo", 2) == 2


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_a_slow_reader_keeps_both_processes_memory_flat() -> None:
    """500 MiB through a reader slower than the writer (it hashes each item several times while
    the worker only allocates zeros): with credit, neither side holds more than a window."""
    size, count, window = 256 * 1024, 2000, 8

    async def body() -> None:
        async with snakeden.Pool(W, size=1, stream_window=window) as pool:
            worker = (await pool.call("pid"),)[0]
            host = os.getpid()
            samples: list[tuple[int, int]] = []
            stream = pool.stream("zeros", count, size)
            async for i, item in _enumerate(stream):
                for _ in range(4):  # the slow part: the reader's own work per item
                    hashlib.sha256(item).digest()
                # The host never holds more than the window (plus what one read brought).
                assert len(stream._run.items) <= window
                if i % 100 == 0:
                    samples.append((_rss(worker), _rss(host)))
            worker_rss = [w for w, _ in samples[2:]]
            host_rss = [h for _, h in samples[2:]]
            total = size * count
            assert max(worker_rss) - min(worker_rss) < total // 20, samples
            assert max(host_rss) - min(host_rss) < total // 20, samples

    run(body())


async def _enumerate(stream: Any) -> Any:
    i = 0
    async for item in stream:
        yield i, item
        i += 1


def test_a_stream_from_a_worker_without_the_feature_is_a_clear_error() -> None:
    script = pathlib.Path(__file__).parent / "workers" / "no_features_worker.py"
    cmd = [sys.executable, str(script)]

    async def body() -> None:
        async with snakeden.Pool("x", command=cmd, size=1) as pool:
            assert await pool.call("echo", 5) == 5
            with pytest.raises(snakeden.FeatureNotSupported, match="'stream' feature"):
                async for _ in pool.stream("echo", 5):
                    pass
            assert await pool.call("echo", 6) == 6

    run(body())
    with snakeden.SyncPool("x", command=cmd, size=1) as pool:
        with pytest.raises(snakeden.FeatureNotSupported):
            list(pool.stream("echo", 5))
        assert pool.call("echo", 7) == 7
