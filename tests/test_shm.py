"""Opt-in zero-copy transfer of large buffers through /dev/shm (``shm_threshold``)."""

from __future__ import annotations

import os
import pathlib

import pytest

import snakeden
from snakeden import _shm
from tests.conftest import run

EX = "snakeden.examples"


def _leftovers() -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(f"snakeden-{os.getpid()}-")]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_large_buffers_travel_by_shared_memory_and_arrive_as_read_only_views(
    start_method: str,
) -> None:
    big = os.urandom(3 * 1024 * 1024)

    async def body() -> None:
        async with snakeden.Pool(
            "tests.workers.faults", size=1, shm_threshold=1024 * 1024, start_method=start_method
        ) as pool:
            echoed = await pool.call("echo", big)
            assert isinstance(echoed, memoryview) and echoed.readonly
            assert bytes(echoed) == big
            assert await pool.call("echo", b"small") == b"small"  # below the threshold: bytes
            assert await pool.call("take", big) == "memoryview"  # what the command receives
            assert await pool.call("take", arg=big) == "memoryview"
        assert _leftovers() == []

    run(body())


def test_sync_pool_shared_memory_and_frame_limit_bypass() -> None:
    big = b"z" * (2 * 1024 * 1024)
    with snakeden.SyncPool(EX, size=1, shm_threshold=65536, max_frame_size=1024 * 1024) as pool:
        assert bytes(pool.call("echo", big)) == big
    assert _leftovers() == []


def test_shared_memory_is_refused_with_pickle() -> None:
    with pytest.raises(ValueError, match="msgpack"):
        snakeden.Pool(EX, serializer="pickle", shm_threshold=1024)


def test_unmapped_leftovers_of_a_run_are_removed() -> None:
    ref = _shm.export(b"abc" * 1000, "999999-deadbeef")
    path, _size = __import__("msgpack").unpackb(ref.data)
    assert pathlib.Path(path).exists()
    assert _shm.remove_leftovers("999999-deadbeef") == 1
    assert not pathlib.Path(path).exists()


def test_ext_hook_refuses_paths_outside_dev_shm() -> None:
    import msgpack

    with pytest.raises(ValueError, match="refusing"):
        _shm.ext_hook(_shm.EXT_SHM, msgpack.packb(["/etc/passwd", 10]))
