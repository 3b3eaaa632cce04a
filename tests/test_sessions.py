"""Sessions with real workers: state kept across calls and dropped on close and expiry, each
affinity mode when the session's worker is busy and when it dies, recycling held for sessions,
two hundred sessions at once, both fronts and both launchers. Busy windows are held open by a
command that waits on a FIFO the test writes (tests/rendezvous.py), never by a sleep."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import snakeden
from tests.conftest import ROOT, run
from tests.rendezvous import Rendezvous

W = "tests.workers.sessions"


class Window:
    """Holds a worker busy: its ``hold`` call runs until :meth:`release`."""

    def __init__(self, directory: str) -> None:
        self.reached = Rendezvous(directory, "reached")
        self.release_path = os.path.join(directory, "release")
        os.mkfifo(self.release_path)

    @property
    def args(self) -> tuple[str, str]:
        return str(self.reached), self.release_path

    def release(self) -> None:
        with open(self.release_path, "w") as f:  # the held call has it open for reading
            f.write("x")


@pytest.fixture
def window() -> Iterator[Window]:
    with tempfile.TemporaryDirectory() as tmp:
        win = Window(tmp)
        yield win
        win.reached.close()


def _kill(pid: int) -> None:
    proc = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    proc.wait(30)


# --- state kept, and dropped ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_state_is_kept_across_calls_and_dropped_on_close_async(method: str) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1, start_method=method) as pool:
            s = await pool.session().open()
            assert await s.call("put", "a", 1) == 1
            assert await s.call("put", "b", [2]) == 2
            assert await s.call("get", "b") == [2]
            assert await s.call("aput", "c", 3) == [s.id, "aput"]  # async commands too
            assert await s.map("get", ["a", "c", "zz"]) == [1, 3, None]
            sid, pid, keys = await s.call("whoami")
            assert sid == s.id and keys == ["a", "b", "c"]
            assert await pool.call("open_sessions") == [s.id]
            assert pool.stats().sessions_by_worker == {s.worker_id: 1}
            await s.close()
            assert await pool.call("open_sessions") == []  # gone from the worker
            assert (await pool.call("whoami"))[1] == pid  # the same worker: it was dropped
            assert pool.stats().sessions == 0
            with pytest.raises(snakeden.SessionClosed):
                await s.call("get", "a")

    run(body())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_state_is_kept_across_calls_and_dropped_on_close_sync(method: str) -> None:
    with snakeden.SyncPool(W, size=1, start_method=method) as pool:
        with pool.session() as s:
            assert s.call("put", "a", 1) == 1
            assert s.submit("put", "b", 2).result(60) == 2
            assert list(s.map("get", ["a", "b"])) == [1, 2]
            assert pool.call("open_sessions") == [s.id]
        assert pool.call("open_sessions") == []
        with pytest.raises(snakeden.SessionClosed):
            s.call("get", "a")


def test_a_sessions_state_is_its_own_and_plain_calls_have_none() -> None:
    with snakeden.SyncPool(W, size=1) as pool, pool.session() as one, pool.session() as two:
        one.call("put", "k", "one")
        two.call("put", "k", "two")
        assert (one.call("get", "k"), two.call("get", "k")) == ("one", "two")
        assert pool.call("whoami")[0] is None
        assert sorted(pool.call("open_sessions")) == sorted([one.id, two.id])


def test_a_session_expires_after_its_idle_ttl_and_its_state_is_dropped() -> None:
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    with snakeden.SyncPool(W, size=1, clock=clock) as pool:
        s = pool.session(ttl=30).open()
        s.call("put", "a", 1)
        clock.now += 20
        assert s.call("get", "a") == 1  # used: the ttl counts from here
        clock.now += 31
        with pytest.raises(snakeden.SessionExpired, match="ttl of 30"):
            s.call("get", "a")
        assert pool.call("open_sessions") == []  # dropped in the worker at once
        with pytest.raises(snakeden.SessionExpired):  # for good
            s.call("get", "a")
        s.close()
        assert pool.stats().sessions == 0


def test_the_cap_on_open_sessions() -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=1, max_sessions=2) as pool:
            async with pool.session(), pool.session():
                with pytest.raises(snakeden.SessionLimit, match="max_sessions=2"):
                    await pool.session().open()
                with pytest.raises(snakeden.PoolSaturated):  # also a PoolSaturated
                    await pool.session().open()
            async with pool.session() as s:  # closed ones free their place
                assert await s.call("put", "a", 1) == 1

    run(body())


def test_bad_affinity_and_ttl_are_refused_with_the_choices() -> None:
    with snakeden.SyncPool(W, size=1) as pool:
        with pytest.raises(ValueError, match=r"'wait'.*'fail'.*'hint'"):
            pool.session(affinity="sticky")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ttl"):
            pool.session(ttl=0)


def test_a_worker_without_the_session_feature_is_a_clear_error() -> None:
    command = [sys.executable, str(ROOT / "tests" / "workers" / "sessionless.py")]
    with snakeden.SyncPool(W, command=command, size=1) as pool:
        with pytest.raises(snakeden.SessionsUnsupported, match="'session' feature"):
            pool.session().open()
        assert pool.call("whoami")[0] is None  # the pool is unaffected


# --- affinity when the worker is busy -------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_wait_queues_for_the_sessions_worker(method: str, window: Window) -> None:
    async def body() -> None:
        async with (
            snakeden.Pool(W, size=2, start_method=method) as pool,
            pool.session(affinity="wait") as s,
        ):
            await s.call("put", "a", 1)
            held = asyncio.create_task(s.call("hold", *window.args))
            pid = int(await window.reached.wait_async())
            queued = asyncio.create_task(s.call("whoami"))
            await asyncio.sleep(0)  # runs the call up to its place in the queue
            assert pool.stats().queued == 1 and not queued.done()
            # Plain calls still run on the other worker meanwhile.
            assert (await pool.call("whoami"))[1] != pid
            await asyncio.to_thread(window.release)
            assert await held == pid
            assert await queued == [s.id, pid, ["a"]]

    run(body())


def test_fail_raises_session_busy_at_once(window: Window) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=2) as pool, pool.session(affinity="fail") as s:
            held = asyncio.create_task(s.call("hold", *window.args))
            await window.reached.wait_async()
            with pytest.raises(snakeden.SessionBusy, match="affinity is 'fail'"):
                await s.call("get", "a")
            await asyncio.to_thread(window.release)
            await held
            assert await s.call("put", "a", 1) == 1  # free again

    run(body())


def test_fail_raises_session_busy_at_once_sync(window: Window) -> None:
    with snakeden.SyncPool(W, size=2) as pool, pool.session(affinity="fail") as s:
        held = s.submit("hold", *window.args)
        window.reached.wait()
        with pytest.raises(snakeden.SessionBusy):
            s.call("get", "a")
        window.release()
        held.result(60)


def test_hint_runs_elsewhere_with_that_workers_own_state(window: Window) -> None:
    with snakeden.SyncPool(W, size=2) as pool:
        with pool.session(affinity="hint") as s:
            s.call("put", "a", 1)
            held = s.submit("hold", *window.args)
            pid = int(window.reached.wait())
            sid, other, keys = s.call("whoami")
            assert sid == s.id and other != pid and keys == []  # a cache of its own there
            window.release()
            assert held.result(60) == pid
            assert pool.stats().sessions_by_worker[s.worker_id or ""] == 1  # homed where it began
        # Closed: dropped on both workers, each of which held a copy. Ask each in turn: one is
        # held busy while the other answers.
        with tempfile.TemporaryDirectory() as tmp:
            second = Window(tmp)
            busy = pool.submit("hold", *second.args)
            busy_pid = int(second.reached.wait())
            assert pool.call("whoami")[1] != busy_pid
            assert pool.call("open_sessions") == []
            second.release()
            assert busy.result(60) == busy_pid
            second.reached.close()
        assert pool.call("whoami")[1] == busy_pid  # the worker released last serves next
        assert pool.call("open_sessions") == []


# --- affinity when the worker dies ----------------------------------------------------------------


@pytest.mark.parametrize("affinity", ["wait", "fail"])
@pytest.mark.parametrize("front", ["async", "sync"])
def test_a_strict_session_is_lost_with_its_worker(front: str, affinity: str) -> None:
    if front == "sync":
        with snakeden.SyncPool(W, size=2) as spool, spool.session(affinity=affinity) as ss:  # type: ignore[arg-type]
            ss.call("put", "a", 1)
            with pytest.raises(snakeden.WorkerCrashed):
                ss.call("die")
            with pytest.raises(snakeden.SessionLost, match="left service"):
                ss.call("get", "a")  # never on a fresh worker with empty state
            assert spool.call("whoami")[0] is None  # the pool serves on
        return

    async def body() -> None:
        async with snakeden.Pool(W, size=2) as pool, pool.session(affinity=affinity) as s:  # type: ignore[arg-type]
            await s.call("put", "a", 1)
            pid = (await s.call("whoami"))[1]
            await asyncio.to_thread(_kill, pid)  # killed while idle
            with pytest.raises(snakeden.SessionLost):
                await s.call("get", "a")
            with pytest.raises(snakeden.SessionLost):
                await s.call("get", "a")

    run(body())


def test_a_caller_waiting_for_a_dead_sessions_worker_gets_session_lost(window: Window) -> None:
    async def body() -> None:
        async with snakeden.Pool(W, size=2) as pool, pool.session(affinity="wait") as s:
            held = asyncio.create_task(s.call("hold", *window.args))
            pid = int(await window.reached.wait_async())
            queued = asyncio.create_task(s.call("get", "a"))
            await asyncio.sleep(0)  # runs the call up to its place in the queue
            assert pool.stats().queued == 1
            await asyncio.to_thread(_kill, pid)
            with pytest.raises(snakeden.WorkerCrashed):
                await held
            with pytest.raises(snakeden.SessionLost, match="while the call waited"):
                await queued

    run(body())


def test_a_hint_session_moves_to_another_worker_when_its_own_dies() -> None:
    with snakeden.SyncPool(W, size=2) as pool, pool.session(affinity="hint") as s:
        s.call("put", "a", 1)
        with pytest.raises(snakeden.WorkerCrashed):
            s.call("die")
        sid, _pid, keys = s.call("whoami")  # re-homed: a fresh cache
        assert sid == s.id and keys == []
        assert pool.stats().sessions_by_worker.get(s.worker_id or "") == 1


# --- recycling -----------------------------------------------------------------------------------


def test_recycling_waits_for_the_sessions_on_a_worker() -> None:
    with snakeden.SyncPool(W, size=1, max_calls=2, session_hold=None) as pool:
        with pool.session() as s:
            pid = s.call("whoami")[1]
            for i in range(6):  # three times past max_calls (and past its hard bound)
                s.call("put", str(i), i)
            assert s.call("whoami")[1] == pid
            assert len(s.call("whoami")[2]) == 6
        # Closed: the worker is recycled now (by maintenance); the pool still serves.
        assert pool.call("whoami")[0] is None


# --- many sessions at once ------------------------------------------------------------------------


def test_two_hundred_concurrent_sessions_each_see_only_their_own_state() -> None:
    async def one(pool: snakeden.Pool, n: int) -> None:
        async with pool.session() as s:
            await s.call("put", "n", n)
            await asyncio.sleep(0)  # let the others interleave
            await s.call("put", "m", -n)
            sid, _pid, keys = await s.call("whoami")
            assert (sid, keys) == (s.id, ["m", "n"])
            assert await s.map("get", ["n", "m"]) == [n, -n]

    async def body() -> None:
        async with snakeden.Pool(W, size=4) as pool:
            await asyncio.gather(*(one(pool, n) for n in range(200)))
            assert pool.stats().sessions == 0
            s = pool.stats()
            assert s.calls_failed == 0 and s.calls_crashed == 0

    run(body())


# --- expiry by the pool's maintenance, timeouts, codecs, pipelining ------------------------------


def test_an_idle_session_is_expired_by_maintenance() -> None:
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()

    async def body() -> None:
        async with snakeden.Pool(W, size=1, clock=clock, session_ttl=0.2) as pool:
            core = pool._core
            assert core is not None
            expired = asyncio.Event()
            seen: list[int] = []
            original = core._sessions_expired

            def record(recs: list[Any]) -> None:
                original(recs)
                seen.extend(r.id for r in recs)
                expired.set()

            core.sup.on_sessions_expired = record
            s = await pool.session().open()
            await s.call("put", "a", 1)
            assert await pool.call("open_sessions") == [s.id]
            clock.now += 1  # idle past its ttl by the pool's clock: the next round drops it
            await asyncio.wait_for(expired.wait(), 60)
            assert seen == [s.id]
            assert await pool.call("open_sessions") == []  # SESSION_CLOSE reached the worker
            with pytest.raises(snakeden.SessionExpired):
                await s.call("get", "a")
            assert pool.stats().sessions == 0

    run(body())


def test_a_call_timeout_kills_the_worker_and_loses_a_strict_session(window: Window) -> None:
    with snakeden.SyncPool(W, size=2) as pool, pool.session() as s:
        s.call("put", "a", 1)
        with pytest.raises(snakeden.CallTimeout):
            s.call("hold", *window.args, timeout=0.5)
        with pytest.raises(snakeden.SessionLost, match="timeout"):
            s.call("get", "a")


@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
def test_sessions_with_either_codec_and_batches(serializer: str) -> None:
    with snakeden.SyncPool(W, size=1, serializer=serializer) as pool:  # type: ignore[call-overload]
        with pool.session() as s:
            assert s.call("put", "t", (1, 2)) == 1
            assert s.call("get", "t") == (1, 2)
        with pool.session() as s:
            assert s.call("get", "t") is None  # a new session: its own, empty state


def test_sessions_on_a_pipelined_pool_keep_to_their_worker() -> None:
    async def one(pool: snakeden.Pool, n: int) -> int:
        async with pool.session() as s:
            await s.call("put", "n", n)
            pids = {(await s.call("whoami"))[1] for _ in range(5)}
            assert len(pids) == 1
            return int(await s.call("get", "n"))

    async def body() -> None:
        async with snakeden.Pool(W, size=2, pipeline=4) as pool:
            assert await asyncio.gather(*(one(pool, n) for n in range(20))) == list(range(20))
            async with pool.session() as s:  # batches (BATCH frames) in a session too
                pairs = [("a", 1), ("b", 2), ("c", 3)]
                assert await s.map("put", pairs, star=True, chunksize=2) == [1, 2, 3]

    run(body())


def test_many_threads_each_with_its_own_session() -> None:
    def one(pool: snakeden.SyncPool, n: int) -> None:
        with pool.session() as s:
            for i in range(5):
                s.call("put", str(i), n)
            sid, _pid, keys = s.call("whoami")
            assert (sid, keys) == (s.id, ["0", "1", "2", "3", "4"])
            assert {s.call("get", str(i)) for i in range(5)} == {n}

    with snakeden.SyncPool(W, size=3) as pool:
        with cf.ThreadPoolExecutor(max_workers=24) as threads:
            list(threads.map(lambda n: one(pool, n), range(60)))
        s = pool.stats()
        assert s.sessions == 0 and s.calls_failed == 0 and s.queued == 0


def test_past_session_hold_the_worker_is_recycled_and_its_session_lost() -> None:
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    recycled = threading.Event()
    seen: list[str] = []  # shown if the worker is recycled too early

    def on_event(event: snakeden.WorkerEvent) -> None:
        seen.append(f"{event.kind} {event.worker_id} {event.detail}")
        if event.kind == "recycled":
            recycled.set()

    # session_ttl only sets how often maintenance looks (0.1 s); the session itself never
    # expires. The hold is counted on the pool's clock, which the test moves.
    options: dict[str, Any] = {"session_ttl": 0.2, "health_interval": None}
    with snakeden.SyncPool(
        W, size=1, max_calls=2, session_hold=30, clock=clock, on_event=on_event, **options
    ) as pool:
        with pool.session(ttl=None) as s:
            pid = s.call("whoami")[1]
            for i in range(4):  # past max_calls: the replacement starts, this worker is held
                s.call("put", str(i), i)
            assert s.call("whoami")[1] == pid and not recycled.is_set(), "; ".join(seen)
            clock.now += 31  # past the hold
            assert recycled.wait(60)
            with pytest.raises(snakeden.SessionLost, match="retired"):
                s.call("get", "0")
        assert pool.call("whoami")[1] != pid
