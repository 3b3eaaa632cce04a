"""``map`` on both fronts: results in order, per-item errors, automatic chunks, and crash or
timeout isolation with chunks queued behind the one running (they run on another worker).

Real worker processes; no timing is asserted (docs/benchmarks.md measures the speed).
"""

from __future__ import annotations

import asyncio
import collections
import pathlib
from typing import Any

import pytest

import snakeden
from snakeden._mapping import (
    AUTO_MAX_CHUNK,
    MAP_DEPTH,
    MAP_DEPTH_MAX,
    MAP_DEPTH_MIN,
    MAP_QUEUED_S,
    MapJob,
    auto_chunksize,
)
from snakeden._protocol import Flag, Kind, decode_body, encode_body, encode_header
from tests.conftest import run
from tests.rendezvous import Rendezvous
from tests.worker_harness import Worker

MOD = "tests.workers.mapping"


def _ran(path: pathlib.Path) -> collections.Counter[str]:
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


def _map(front: str, items: list[Any], **kw: Any) -> Any:
    """``map("step", items)`` on a pool of one worker; returns (outcome, stats)."""
    pool_kw = {k: kw.pop(k) for k in list(kw) if k in ("call_timeout", "size")}
    pool_kw.setdefault("size", 1)
    if front == "sync":
        with snakeden.SyncPool(MOD, **pool_kw) as pool:
            try:
                out: Any = list(pool.map("step", items, **kw))
            except Exception as exc:
                out = exc
            return out, pool.stats()

    async def body() -> Any:
        async with snakeden.Pool(MOD, **pool_kw) as pool:
            try:
                out: Any = await pool.map("step", items, **kw)
            except Exception as exc:
                out = exc
            return out, pool.stats()

    return run(body())


FRONTS = ["async", "sync"]


def test_auto_chunksize_rule() -> None:
    assert auto_chunksize(0, 4) == 1
    assert auto_chunksize(10, 1) == 3  # ceil(10 / 4)
    assert auto_chunksize(1000, 2) == 125  # ceil(1000 / 8)
    assert auto_chunksize(10**7, 2) == AUTO_MAX_CHUNK


def test_chunks_in_flight_follow_the_chunk_time() -> None:
    """The rule of _mapping's docstring: MAP_DEPTH until a chunk's time is known, then as many
    as hold MAP_QUEUED_S of work, within the bounds. (No pool: an empty job needs none.)"""
    job = MapJob(None, "echo", [], 1, None, flat=False)  # type: ignore[arg-type]
    assert job.depth() == MAP_DEPTH
    job.timed(MAP_QUEUED_S / 10)
    assert job.depth() == 10
    for _ in range(50):  # the estimate is smoothed: it follows a change within a few chunks
        job.timed(MAP_QUEUED_S * 10)
    assert job.depth() == MAP_DEPTH_MIN
    for _ in range(50):
        job.timed(MAP_QUEUED_S / 1000)
    assert job.depth() == MAP_DEPTH_MAX


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_results_in_order(front: str, chunksize: int | None) -> None:
    items = list(range(1000))
    if front == "sync":
        with snakeden.SyncPool(MOD, size=2) as pool:
            assert list(pool.map("twice", items, chunksize=chunksize)) == [2 * x for x in items]
            assert list(pool.map("add", items, items, chunksize=chunksize)) == [
                2 * x for x in items
            ]
            assert list(pool.map("later", items, chunksize=chunksize)) == items
            assert list(pool.map("deferred", items, chunksize=chunksize)) == items
            assert list(pool.map("twice", [], chunksize=chunksize)) == []
        return

    async def body() -> None:
        async with snakeden.Pool(MOD, size=2) as pool:
            assert await pool.map("twice", items, chunksize=chunksize) == [2 * x for x in items]
            pairs = [(x, 1) for x in items]
            got = await pool.map("add", pairs, chunksize=chunksize, star=True)
            assert got == [x + 1 for x in items]
            assert await pool.map("later", items, chunksize=chunksize) == items
            assert await pool.map("deferred", items, chunksize=chunksize) == items
            assert await pool.map("twice", [], chunksize=chunksize) == []

    run(body())


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
def test_value_types_survive(front: str, serializer: str) -> None:
    items: list[Any] = [b"x", "s", 1, 1.5, None, True, [1], {"k": 1}, (1, 2)]
    want = ["bytes", "str", "int", "float", "NoneType", "bool", "list", "dict", "tuple"]
    if front == "sync":
        with snakeden.SyncPool(MOD, size=2, serializer=serializer) as pool:
            assert list(pool.map("kind", items, chunksize=3)) == want
            assert list(pool.map("twice", items[:3], chunksize=3)) == [b"xx", "ss", 2]
        return

    async def body() -> None:
        async with snakeden.Pool(MOD, size=2, serializer=serializer) as pool:
            assert await pool.map("kind", items, chunksize=3) == want
            assert await pool.map("twice", items[:3], chunksize=3) == [b"xx", "ss", 2]

    run(body())


@pytest.mark.parametrize("front", FRONTS)
def test_failed_items_fail_alone_and_the_first_raises(front: str, tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "ran"
    items = [["ok" if i not in (5, 9) else "fail", str(rec), f"t{i}"] for i in range(20)]
    out, stats = _map(front, items, chunksize=4, size=2)
    assert isinstance(out, ValueError) and "item t5 failed" in str(out)
    assert _ran(rec) == collections.Counter(f"t{i}" for i in range(20))  # all ran, once
    assert stats.calls_crashed == 0 and stats.restarts == 0


def test_sync_map_yields_the_results_before_the_failed_item(tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "ran"
    items = [["ok" if i != 6 else "fail", str(rec), f"t{i}"] for i in range(10)]
    with snakeden.SyncPool(MOD, size=2) as pool:
        results = pool.map("step", items, chunksize=4)
        assert [next(results) for _ in range(6)] == [f"t{i}" for i in range(6)]
        with pytest.raises(ValueError, match="item t6 failed"):
            next(results)


@pytest.mark.parametrize("front", FRONTS)
def test_a_crash_fails_only_the_running_chunk(front: str, tmp_path: pathlib.Path) -> None:
    """One worker, several chunks in flight on it: the one running when the worker dies fails
    (with the crash), the ones queued behind it never began and run on the replacement."""
    rec = tmp_path / "ran"
    items = [["ok", str(rec), f"t{i}"] for i in range(12)]
    items[2] = ["crash", str(rec), "t2"]  # second chunk of two items each
    out, stats = _map(front, items, chunksize=2)
    assert isinstance(out, snakeden.WorkerCrashed) and "exited with code 9" in str(out)
    # t3 shares the crashed chunk: never ran. Every other item ran exactly once.
    assert _ran(rec) == collections.Counter(f"t{i}" for i in range(12) if i != 3)
    assert stats.calls_crashed == 1
    assert stats.calls_redispatched >= 1  # the chunk behind it was in the dead worker's pipe
    assert stats.restarts >= 1


@pytest.mark.parametrize("front", FRONTS)
def test_a_timeout_fails_only_the_running_chunk(front: str, tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "ran"
    items = [["ok", str(rec), f"t{i}"] for i in range(10)]
    items[2] = ["hang", str(rec), "t2"]
    # The timeout bounds each chunk; the hung one is killed after it, the rest run elsewhere.
    kw: dict[str, Any] = {"call_timeout": 3.0} if front == "sync" else {"timeout": 3.0}
    out, stats = _map(front, items, chunksize=2, **kw)
    assert isinstance(out, snakeden.CallTimeout)
    assert _ran(rec) == collections.Counter(f"t{i}" for i in range(10) if i != 3)
    assert stats.calls_timed_out == 1
    assert stats.calls_redispatched >= 1


def test_bad_chunksize_and_unsendable_items() -> None:
    async def body() -> None:
        async with snakeden.Pool(MOD, size=1) as pool:
            with pytest.raises(ValueError, match="chunksize must be >= 1"):
                await pool.map("twice", [1], chunksize=0)
            with pytest.raises(snakeden.SerializationError, match="Nothing was sent"):
                await pool.map("twice", [1, object()], chunksize=2)
            assert pool.stats().calls_ok == 0  # nothing was sent
            assert await pool.map("twice", [1, 2]) == [2, 4]  # the pool is fine

    run(body())
    with snakeden.SyncPool(MOD, size=1) as pool, pytest.raises(ValueError, match="chunksize"):
        pool.map("twice", [1], chunksize=0)


def test_oversized_chunks_are_split() -> None:
    """An automatic chunk (16 items here) too large for one frame is halved until it fits."""
    items = [b"x" * 3000 for _ in range(64)]

    async def body() -> None:
        async with snakeden.Pool(MOD, size=1, max_frame_size=16 * 1024) as pool:
            assert await pool.map("kind", items) == ["bytes"] * 64
            with pytest.raises(snakeden.PayloadTooLarge):
                await pool.map("kind", [b"x" * 20000])

    run(body())


def test_cancelled_map_gives_its_worker_back(tmp_path: pathlib.Path) -> None:
    """Cancelling a map with chunks in flight: the caller gets its CancelledError untouched,
    the hung chunk's worker is killed after ``cancel_grace``, and the pool serves on."""

    async def body() -> None:
        async with snakeden.Pool(MOD, size=1, cancel_grace=0.5) as pool:
            with Rendezvous(tmp_path) as started:
                items = [["hang", str(started), "t0"], ["ok", str(tmp_path / "r"), "t1"]]
                task = asyncio.ensure_future(pool.map("step", items * 3, chunksize=2))
                await started.wait_async()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await pool.map("twice", [1, 2, 3]) == [2, 4, 6]
            assert pool.stats().calls_cancelled >= 1

    run(body())


def test_the_python_worker_answers_flat_batches_flat() -> None:
    """BATCH|FLAT to the Python worker: RESULT flags FLAT alone and the bare values when every
    item succeeded (sync or async command), the plain BATCH pairs when one failed."""
    w = Worker("tests.workers.fuzzing", max_frame_size=1 << 20)
    try:
        for ident, (command, items) in enumerate(
            [("echo", [1, [2]]), ("aecho", [1, [2]]), ("echo", [])], start=1
        ):
            data = encode_body([command, items, {}])
            flags = Flag.BATCH | Flag.FLAT
            assert w.send([encode_header(Kind.CALL, ident, len(data), flags) + data])
            frame = w.reply()
            assert (frame.kind, frame.flags, frame.id) == (Kind.RESULT, Flag.FLAT, ident)
            assert decode_body(frame) == items
    finally:
        w.close()
