"""A worker's stdout and stderr: never on the channel, logged line by line, never stalling calls."""

from __future__ import annotations

import asyncio
import logging

import pytest

import snakeden
from snakeden._output import OutputTail
from tests.conftest import run

EX = "snakeden.examples"


def test_print_and_raw_fd1_writes_reach_logging_tagged_and_do_not_corrupt_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="snakeden.worker")

    async def body() -> None:
        async with snakeden.Pool(EX, size=1) as pool:
            pid = await pool.call("pid")
            assert await pool.call("shout", 3) == 3
            assert await pool.call("add", 1, 2) == 3
            # The output pipe is drained on the loop; a round trip later it has been read.
            await pool.call("shout", 0)
            await _settle()
            lines = [r for r in caplog.records if r.name == "snakeden.worker"]
            texts = [r.getMessage() for r in lines]
            assert any(f"line 2 from pid {pid}" in t for t in texts), texts
            assert any("raw write to fd 1" in t for t in texts)
            rec = next(r for r in lines if "line 0" in r.getMessage())
            assert rec.worker_pid == pid  # type: ignore[attr-defined]
            assert rec.stream == "stdout"  # type: ignore[attr-defined]
            assert rec.worker_id.startswith("w")  # type: ignore[attr-defined]

    run(body())


def test_a_flood_of_stdout_and_stderr_does_not_stall_or_corrupt_calls() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=2) as pool:
            # 20,000 lines each (well over any pipe buffer) beside ordinary calls.
            floods = [
                asyncio.create_task(pool.call("shout", 20_000, "stderr", timeout=120)),
                asyncio.create_task(pool.call("shout", 20_000, "stdout", timeout=120)),
            ]
            calls = await asyncio.gather(*(pool.call("add", i, i) for i in range(200)))
            assert calls == [2 * i for i in range(200)]
            assert await asyncio.gather(*floods) == [20_000, 20_000]
            assert await pool.call("echo", b"\x00" * 10) == b"\x00" * 10

    run(body())


def test_sync_pool_output_flood() -> None:
    with snakeden.SyncPool(EX, size=1) as pool:
        assert pool.call("shout", 20_000, "stderr", timeout=120) == 20_000
        assert pool.call("add", 2, 2) == 4


async def _settle() -> None:
    # One more call's round trip plus a loop turn: the reader callback has run.
    await asyncio.sleep(0)


def test_output_tail_splits_lines_fed_in_any_chunks() -> None:
    tail = OutputTail("stdout", "w1", 123, keep=3)
    data = b"alpha\nbe" + b"ta\r\ngamma\n" + b"delta"
    for i in range(len(data)):
        tail.feed(data[i : i + 1])
    assert list(tail.lines) == ["alpha", "beta", "gamma"]
    tail.detach()  # end of stream flushes the partial last line
    assert list(tail.lines) == ["beta", "gamma", "delta"]


def test_output_tail_bounds_binary_garbage() -> None:
    tail = OutputTail("stderr", "w1", 1, keep=2)
    tail.feed(b"\xff" * 200_000)
    assert all(len(line) <= 64 * 1024 for line in tail.lines)
    assert tail.lines
