"""The asyncio front on uvloop's event loop (``snakeden[fast]``): the same behaviour."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest

import snakeden

uvloop = pytest.importorskip("uvloop")


def test_calls_map_crash_and_shared_memory_on_uvloop(tmp_path: pathlib.Path) -> None:
    big = os.urandom(256 * 1024)
    rec = tmp_path / "ran"

    async def body() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        async with snakeden.Pool("tests.workers.mapping", size=2) as pool:
            assert await pool.call("twice", 21) == 42
            assert await pool.map("twice", range(500)) == [2 * x for x in range(500)]
            assert await pool.call("twice", big) == big * 2  # by shared memory
            items = [["ok", str(rec), f"t{i}"] for i in range(6)]
            items[1] = ["crash", str(rec), "t1"]
            with pytest.raises(snakeden.WorkerCrashed):
                await pool.map("step", items, chunksize=1)
            assert await pool.call("twice", 1) == 2  # a replacement serves

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(body())
    assert sorted(rec.read_text().split()) == [f"t{i}" for i in range(6)]
