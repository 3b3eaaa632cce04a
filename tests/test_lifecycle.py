"""Issue 3: the fork template, readiness, health, recycling, growth and shrink, crash loops and
lifecycle events. Real processes and signals; waits are on events, with generous bounds."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import tempfile

import psutil
import pytest

import snakeden
from tests.conftest import run
from tests.recorder import Recorder
from tests.rendezvous import Rendezvous

LC = "tests.workers.lifecycle"


def test_fork_template_imports_once_and_workers_are_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp, "imports")
        monkeypatch.setenv("SNAKEDEN_TEST_IMPORT_LOG", str(log))
        monkeypatch.setenv("SNAKEDEN_TEST_IMPORT_BURN", "0.3")

        async def body() -> None:
            async with snakeden.Pool(LC, size=4, start_method="fork") as pool:
                template = pool._core.launcher.pids()  # type: ignore[union-attr]
                assert len(template) == 1
                importers = await asyncio.gather(*(pool.call("imported_by") for _ in range(8)))
                pids = await asyncio.gather(*(pool.call("getpid") for _ in range(8)))
                assert set(importers) == {template[0]}
                assert template[0] not in pids
                # A crash and a timeout are replaced from the same warm template.
                with pytest.raises(snakeden.CallTimeout):
                    await pool.call("nap", 3600, timeout=0.3)
                await pool.wait_ready(timeout=60)
                assert set(await pool.map("imported_by", [()] * 8, star=True)) == {template[0]}
                assert pool.stats().restarts == 1

        run(body())
        assert log.read_text().split() == [log.read_text().split()[0]]  # imported exactly once


def test_spawn_imports_in_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp, "imports")
        monkeypatch.setenv("SNAKEDEN_TEST_IMPORT_LOG", str(log))

        async def body() -> None:
            async with snakeden.Pool(LC, size=3, start_method="spawn") as pool:
                pids = set(pool.worker_pids())
                assert set(await pool.map("imported_by", [()] * 12, star=True)) <= pids

        run(body())
        assert len(log.read_text().split()) == 3


def test_template_refuses_python_threads_at_import() -> None:
    async def body() -> None:
        with pytest.raises(snakeden.WorkerStartError, match="started Python threads"):
            async with snakeden.Pool(
                "tests.workers.threads_at_import", size=1, start_method="fork"
            ):
                pass
        # The same module is fine with spawn.
        async with snakeden.Pool(
            "tests.workers.threads_at_import", size=1, start_method="spawn"
        ) as p:
            assert await p.call("ping") == "pong"

    run(body())


def test_events_cover_the_lifecycle_with_timings() -> None:
    rec = Recorder()

    async def body() -> None:
        async with snakeden.Pool("snakeden.examples", size=2, on_event=rec) as pool:
            with pytest.raises(snakeden.WorkerCrashed):
                await pool.call("crash", "os_exit")
            with pytest.raises(snakeden.CallTimeout):
                await pool.call("hang_in_c", 3600, timeout=0.2)
            await rec.wait_count_async("ready", 4)

    run(body())
    kinds = rec.kinds()
    assert kinds.count("started") == 4 and kinds.count("ready") == 4
    assert kinds.count("crashed") == 1 and kinds.count("timed_out") == 1
    ready = [e for e in rec.events if e.kind == "ready"]
    assert all(e.duration is not None and e.duration > 0 and e.pid for e in ready)
    crashed = next(e for e in rec.events if e.kind == "crashed")
    assert "exited with code 7" in crashed.detail or crashed.detail == "crash"


def test_partial_start_min_ready_and_per_worker_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flag = pathlib.Path(tmp, "broken")
        monkeypatch.setenv("SNAKEDEN_TEST_BREAK", str(flag))
        flag.touch()
        rec = Recorder()

        async def body() -> None:
            # Every worker fails set-up: start reports each failure with its cause.
            with pytest.raises(snakeden.WorkerStartError) as info:
                async with snakeden.Pool(f"{LC}:Fragile", size=2):
                    pass
            assert "set-up refused" in str(info.value)
            assert all("set-up refused" in v for v in info.value.failures.values())
            flag.unlink()
            async with snakeden.Pool(f"{LC}:Fragile", size=3, min_ready=1, on_event=rec) as pool:
                assert pool.stats().workers >= 1
                await pool.wait_ready(timeout=60)
                assert pool.stats().ready == 3

        run(body())


def test_crash_loop_ends_in_a_broken_pool_with_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flag = pathlib.Path(tmp, "broken")
        monkeypatch.setenv("SNAKEDEN_TEST_BREAK", str(flag))
        rec = Recorder()

        async def body() -> None:
            async with snakeden.Pool(
                f"{LC}:Fragile", size=1, on_event=rec, max_start_failures=3
            ) as pool:
                flag.touch()  # from now on, every replacement fails its set-up
                os.kill(pool.worker_pids()[0], signal.SIGKILL)
                await rec.wait_count_async("start_failed", 3)
                with pytest.raises(snakeden.PoolBroken, match="set-up refused") as info:
                    await pool.call("getpid")
                assert isinstance(info.value.__cause__, snakeden.WorkerStartError)
                assert pool.stats().state == "broken"

        run(body())
        # Restarts backed off exponentially between the failures.
        delays = [e.duration for e in rec.events if e.kind == "backoff"]
        assert len(delays) >= 2
        assert delays[:2] == [0.05, 0.1]


def test_health_check_replaces_a_stopped_worker_but_not_a_busy_one() -> None:
    rec = Recorder()

    async def body() -> None:
        async with snakeden.Pool(
            LC, size=2, health_interval=0.1, ping_timeout=1.0, on_event=rec
        ) as pool:
            # A call far longer than the health interval: busy is not dead.
            assert await pool.call("nap", 1.0) == 1.0
            assert rec.count("unhealthy") == 0
            victim = pool.worker_pids()[0]
            os.kill(victim, signal.SIGSTOP)
            try:
                await rec.wait_count_async("unhealthy")
                await rec.wait_count_async("ready", 3)
            finally:
                if psutil.pid_exists(victim):
                    os.kill(victim, signal.SIGCONT)
            assert victim not in pool.worker_pids()
            assert await asyncio.gather(*(pool.call("echo", i) for i in range(10))) == list(
                range(10)
            )
            assert pool.stats().calls_crashed == 0

    run(body())


def test_recycling_by_calls_under_load_loses_no_call() -> None:
    rec = Recorder()

    async def body() -> snakeden.Pool:
        async with snakeden.Pool(LC, size=2, max_calls=10, on_event=rec) as pool:
            results = await asyncio.gather(*(pool.call("echo", i) for i in range(300)))
            assert results == list(range(300))
            pids = await asyncio.gather(*(pool.call("getpid") for _ in range(50)))
            s = pool.stats()
            assert s.calls_ok == 350 and s.calls_failed == s.calls_crashed == 0
            # A worker serves on past max_calls until its replacement is warm (at most 2x).
            assert s.recycled >= 350 // (2 * 11) - 2
            assert len(set(pids)) >= 2

        return pool

    pool = run(body())
    assert rec.count("recycled") == pool.stats().recycled  # one event per retired worker


def test_sync_recycling_by_calls_loses_no_call() -> None:
    with snakeden.SyncPool(LC, size=2, max_calls=5) as pool:
        assert list(pool.map("echo", range(200), chunksize=1)) == list(range(200))
        assert pool.stats().recycled >= 200 // (2 * 6) - 2


def test_recycling_by_age_and_by_memory() -> None:
    rec = Recorder()

    async def body() -> None:
        async with snakeden.Pool(
            LC, size=1, max_age=0.3, health_interval=None, on_event=rec
        ) as pool:
            first = pool.worker_pids()[0]
            await rec.wait_count_async("recycled")
            await pool.wait_ready(timeout=60)
            assert await pool.call("getpid") != first
        async with snakeden.Pool(
            LC, size=1, max_memory=80 * 1024 * 1024, memory_check_interval=0.0, on_event=rec
        ) as pool:
            first = await pool.call("getpid")
            assert await pool.call("hog", 120) == 1  # the call itself succeeds
            await rec.wait_count_async("over_memory")
            await pool.wait_ready(timeout=60)
            assert await pool.call("getpid") != first

    run(body())


def test_grows_under_load_and_shrinks_when_idle() -> None:
    rec = Recorder()

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with snakeden.Pool(
                "tests.workers.faults",
                size=1,
                max_size=3,
                idle_timeout=0.3,
                health_interval=None,
                on_event=rec,
            ) as pool:
                flags = [Rendezvous(tmp, f"r{i}") for i in range(3)]
                calls = [asyncio.create_task(pool.call("block", str(f), 1.0)) for f in flags]
                for f in flags:
                    await f.wait_async()  # all three run at once: the pool grew to 3
                assert len(pool.worker_pids()) == 3
                await asyncio.gather(*calls)
                await rec.wait_count_async("shrunk", 2)
                assert pool.stats().workers == 1
                assert await pool.call("echo", 5) == 5
                for f in flags:
                    f.close()

    run(body())


def test_worker_count_stays_at_size_after_every_worker_dies_at_once() -> None:
    rec = Recorder()

    async def body() -> None:
        async with snakeden.Pool(LC, size=4, on_event=rec) as pool:
            for pid in pool.worker_pids():
                os.kill(pid, signal.SIGKILL)
            await rec.wait_count_async("ready", 8)
            await pool.wait_ready(timeout=60)
            assert await asyncio.gather(*(pool.call("echo", i) for i in range(40))) == list(
                range(40)
            )
            s = pool.stats()
            assert (s.workers, s.ready, s.restarts) == (4, 4, 4)
            assert len(pool.worker_pids()) == 4

    run(body())


def test_worker_count_is_stable_over_age_recycling_cycles() -> None:
    rec = Recorder()

    async def body() -> None:
        async with snakeden.Pool(LC, size=3, max_age=0.2, health_interval=None, on_event=rec) as p:
            await rec.wait_count_async("recycled", 9)  # three full generations
            # Aged workers serve on while their replacements warm, so the number of processes
            # varies (3 to 6); what must hold at every moment is that exactly `size` of them
            # are meant to stay, counting starts already scheduled.
            co = p._core.checkout  # type: ignore[union-attr]
            with co.lock:
                staying = sum(w.active for w in co.workers.values()) + co.scheduled
            assert staying == 3
            assert 3 <= p.stats().workers <= 6
            assert len(p.worker_pids()) <= 9  # retired ones may still be exiting

    run(body())
    assert rec.count("started") <= rec.count("recycled") + 3 + 3


def test_shrinks_even_with_health_pings_running() -> None:
    rec = Recorder()

    async def body() -> None:
        async with snakeden.Pool(
            LC, size=1, max_size=3, idle_timeout=0.5, health_interval=0.1, on_event=rec
        ) as pool:
            await asyncio.gather(*(pool.call("nap", 0.3) for _ in range(6)))
            await rec.wait_count_async("shrunk", 2)
            assert pool.stats().workers == 1

    run(body())


def test_close_serves_queued_calls_even_if_a_worker_dies_meanwhile() -> None:
    async def body() -> None:
        pool = await snakeden.Pool("snakeden.examples", size=1).start()
        crashing = asyncio.create_task(pool.call("crash", "os_exit"))
        queued = asyncio.create_task(pool.call("add", 2, 2))
        await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(pool.close(), pool.close()), 60)
        with pytest.raises(snakeden.WorkerCrashed, match="exited with code 7"):
            await crashing
        assert await queued == 4  # a replacement served it during the drain

    run(body())


def test_template_death_takes_its_workers_and_a_new_template_replaces_them() -> None:
    rec = Recorder()

    async def body() -> None:
        async with snakeden.Pool(LC, size=2, start_method="fork", on_event=rec) as pool:
            launcher = pool._core.launcher  # type: ignore[union-attr]
            (template,) = launcher.pids()
            old = set(pool.worker_pids())
            os.kill(template, signal.SIGKILL)
            await rec.wait_count_async("ready", 4)
            await pool.wait_ready(timeout=60)
            assert await pool.map("echo", range(20)) == list(range(20))
            assert launcher.pids() and launcher.pids()[0] != template
            assert not old & set(pool.worker_pids())
            importers = set(await pool.map("imported_by", [()] * 6, star=True))
            assert importers == {launcher.pids()[0]}  # still warm: forked from the new template

    run(body())
