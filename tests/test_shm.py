"""Large buffers through each worker's persistent shared-memory regions (``shm_threshold``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import snakeden
from snakeden import _regions
from tests.conftest import run

FAULTS = "tests.workers.faults"
EX = "snakeden.examples"
MIB = 1024 * 1024


def _leftovers(tag: str | None = None) -> list[str]:
    prefix = f"snakeden-{tag}-" if tag else f"snakeden-{os.getpid()}-"
    return [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_large_buffers_round_trip_as_bytes_at_any_nesting(start_method: str) -> None:
    big = os.urandom(3 * MIB)
    other = os.urandom(MIB + 1)

    async def body() -> None:
        async with snakeden.Pool(
            FAULTS, size=1, shm_threshold=MIB, start_method=start_method
        ) as pool:
            echoed = await pool.call("echo", big)
            assert type(echoed) is bytes and echoed == big
            nested = {"a": [big, (1, other)], "b": b"small", "c": bytearray(other)}
            back = await pool.call("echo", nested)
            assert back == {"a": [big, (1, other)], "b": b"small", "c": other}
            assert type(back["c"]) is bytes  # as by pipe: MessagePack's bin is bytes
            assert await pool.call("echo", b"small") == b"small"
            assert await pool.call("take", big) == "bytes"  # what the command receives
            assert await pool.call("take", arg=memoryview(big)) == "bytes"
            # The region is reused: a value kept from an earlier call is not overwritten.
            again = await pool.call("echo", other)
            assert echoed == big and again == other
            assert pool.worker_pids()  # regions are open, but no file is left in /dev/shm
            assert _leftovers(pool.run_tag) == []
        assert _leftovers() == []

    run(body())


def test_numpy_arrays_go_out_of_band_with_pickle() -> None:
    arr = np.arange(2 * MIB, dtype=np.float64).reshape(1024, -1)
    with snakeden.SyncPool(FAULTS, size=1, serializer="pickle", shm_threshold=MIB) as pool:
        back = pool.call("echo", [arr, {"k": arr[:2]}])
        assert isinstance(back[0], np.ndarray) and np.array_equal(back[0], arr)
        assert back[0].flags.writeable and back[0].base is not None  # over its own memory
        back[0][0, 0] = -1.0  # writable, and not the region's memory
        second = pool.call("echo", arr)
        assert second[0, 0] == 0.0 and back[0][0, 0] == -1.0
        assert np.array_equal(back[1]["k"], arr[:2])
        assert pool.call("take", arr) == "ndarray"


def test_sync_pool_regions_lift_the_frame_limit() -> None:
    big = b"z" * (2 * MIB)
    with snakeden.SyncPool(EX, size=1, shm_threshold=65536, max_frame_size=MIB) as pool:
        assert pool.call("echo", big) == big
        with pytest.raises(snakeden.PayloadTooLarge):
            pool.call("echo", [b"y" * 1000] * 2000)  # many small buffers still go by pipe
        tag = pool.run_tag
    assert _leftovers(tag) == []


def test_no_leftover_files_after_a_crash() -> None:
    big = os.urandom(2 * MIB)

    async def body() -> None:
        async with snakeden.Pool(FAULTS, size=1, shm_threshold=MIB) as pool:
            assert await pool.call("echo", big) == big
            with pytest.raises(snakeden.WorkerCrashed):
                await pool.call("run_fault", "sigkill")
            await pool.wait_ready(timeout=60)
            assert await pool.call("echo", big) == big  # the replacement has regions of its own
            assert _leftovers(pool.run_tag) == []

    run(body())
    assert _leftovers() == []


def test_pipelined_pools_and_bad_thresholds_go_by_pipe() -> None:
    big = os.urandom(2 * MIB)

    async def body() -> None:
        async with snakeden.Pool(FAULTS, size=1, shm_threshold=MIB, pipeline=4) as pool:
            assert await pool.call("echo", big) == big

    run(body())
    with pytest.raises(ValueError, match="shm_threshold"):
        snakeden.Pool(EX, shm_threshold=0)


def test_region_layout_round_trip(tmp_path: Any) -> None:
    path = tmp_path / "r"
    writer = _regions.Region.open(path, create=True)
    reader = _regions.Region.open(path, create=False)
    assert writer is not None and reader is not None
    bufs = [memoryview(b"a" * 10), memoryview(b"b" * 100_000), memoryview(b"")]
    writer.put(bufs)
    assert [bytes(v) for v in reader.take()] == [b"a" * 10, b"b" * 100_000, b""]
    writer.put([memoryview(b"c" * 300_000)])  # grows: the reader maps the larger file
    assert [bytes(v) for v in reader.take()] == [b"c" * 300_000]
