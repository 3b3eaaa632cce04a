"""The thread front: a drop-in concurrent.futures.Executor."""

from __future__ import annotations

import concurrent.futures as cf
import math
import tempfile

import pytest

import snakeden
from tests.rendezvous import Rendezvous, held_calls

EX = "snakeden.examples"
FAULTS = "tests.workers.faults"


def test_is_an_executor_with_submit_map_shutdown() -> None:
    pool = snakeden.SyncPool(EX, size=2)
    assert isinstance(pool, cf.Executor)
    with pool:
        futs = [pool.submit(math.factorial, i) for i in range(21)]  # 21! > 2**64: msgpack
        assert [f.result(60) for f in futs] == [math.factorial(i) for i in range(21)]
        assert list(pool.map(pow, range(10), [2] * 10)) == [i * i for i in range(10)]
        assert list(pool.map("add", range(100), range(100), chunksize=9)) == [
            2 * i for i in range(100)
        ]
        fut = pool.submit("fail", "nope")
        with pytest.raises(snakeden.RemoteError, match="nope"):
            fut.result(60)
        # as_completed and wait work on our futures.
        done, _ = cf.wait([pool.submit("add", 1, 1) for _ in range(5)], timeout=60)
        assert {f.result() for f in done} == {2}
    with pytest.raises(RuntimeError):
        pool.submit("add", 1, 1)
    with pytest.raises(snakeden.PoolClosed):
        pool.call("add", 1, 1)


def test_submit_passes_every_keyword_through() -> None:
    with snakeden.SyncPool(EX, size=1) as pool:
        assert pool.submit("add", a=1, b=2).result(60) == 3
        assert pool.call("add", a="x", b="y") == "xy"


def test_shutdown_cancel_futures_never_runs_queued_calls() -> None:
    with tempfile.TemporaryDirectory() as tmp, Rendezvous(tmp) as flag:
        pool = snakeden.SyncPool(FAULTS, size=1, call_timeout=3.0)
        blocker = pool.submit("block", str(flag), 3600)
        flag.wait()
        queued = [pool.submit("echo", i) for i in range(5)]
        pool.shutdown(wait=True, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        with pytest.raises(snakeden.CallTimeout):
            blocker.result(60)


def test_exceptions_in_map_surface_on_iteration() -> None:
    with snakeden.SyncPool(EX, size=2) as pool:
        it = pool.map("fail", ["a", "b"])
        with pytest.raises(snakeden.RemoteError):
            list(it)


def test_timeout_from_a_thread_kills_and_replaces() -> None:
    with snakeden.SyncPool(EX, size=1) as pool:
        before = pool.worker_pids()
        with pytest.raises(snakeden.CallTimeout) as info:
            pool.call("hang_in_c", 3600, timeout=0.5)
        assert isinstance(info.value, TimeoutError)
        pool.wait_ready(timeout=60)
        assert pool.call("add", 1, 1) == 2
        assert pool.worker_pids() != before
        s = pool.stats()
        assert s.calls_timed_out == 1 and s.restarts == 1


def test_a_call_submitted_while_another_runs_long_reaches_the_idle_worker() -> None:
    """Each submitted call gets a dispatcher thread unless an idle one waits for it: the second
    call runs on the idle worker while the first still runs (it used to wait for the first)."""
    with tempfile.TemporaryDirectory() as tmp:
        flags, releases = held_calls(tmp, 2)
        with snakeden.SyncPool(FAULTS, size=2) as pool:
            first = pool.submit("block_until", str(flags[0]), releases[0])
            pid = int(flags[0].wait())
            second = pool.submit("block_until", str(flags[1]), releases[1])
            assert int(flags[1].wait()) != pid  # both run at once
            for r in releases:
                with open(r, "w") as f:
                    f.write("x")
            assert first.result(60) is None and second.result(60) is None
