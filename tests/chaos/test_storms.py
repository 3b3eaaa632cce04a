"""Storms of faults with real processes, scaled down from issue 8's to fit the test run (the
whole folder in well under a minute); ``snakeden bench --soak`` runs them at full scale for
minutes. The storms and their exact expectations live in :mod:`snakeden._bench._chaos`: a call
fails only if it was harmed itself (and then with exactly the right error), no call hangs or is
lost, the pool ends at full strength with nothing leased or queued, its counters agree with what
the callers saw, and ``close()`` returns leaving no process behind.
"""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

import snakeden
from snakeden._bench import _chaos, _chaos_cycles, _chaos_load, _chaos_procs
from tests.conftest import run, start_host_script, survivors

FRONTS = ["async", "sync"]
# Issue 8 storms 8 workers; on a 2-core machine 4 make the same races without starving the load.
SIZE = 8 if (os.cpu_count() or 1) > 2 else 4


def check(report: _chaos_load.StormReport) -> None:
    print(report.summary())
    assert not report.violations, report.summary()


@pytest.mark.parametrize("front", FRONTS)
def test_kill_storm(front: _chaos_procs.Front) -> None:
    """2 random ready workers SIGKILLed every 25 ms for 12 rounds while 16 callers keep calls
    flowing: failures only among calls that ran on a killed worker (none on one that was idle
    when it died), every kill noticed and replaced, nothing leaked."""
    check(run(_chaos.kill_storm(front, size=SIZE, rounds=12, min_calls=300, lanes=16)))


@pytest.mark.parametrize("front", ["async", "submit"])
def test_kill_storm_with_calls_taken_back(front: _chaos_procs.Front) -> None:
    """The kill storm with calls of up to 40 ms (4x BEHIND_LIMIT) and SyncPool through
    submit(): calls queue behind young ones and are taken back once those run long, while
    workers die under them. The same expectations (failures only among calls that ran on a
    killed worker, at most one per worker, every kill noticed and replaced, nothing leaked),
    and calls were taken back."""
    report = run(
        _chaos.kill_storm(front, size=SIZE, rounds=12, min_calls=300, lanes=16, max_ms=40.0)
    )
    check(report)
    assert report.taken_back, f"no call was taken back: {report.summary()}"


@pytest.mark.parametrize("front", FRONTS)
def test_hang_storm(front: _chaos_procs.Front) -> None:
    """8 calls hung in C (0.5 s timeout) among 150 normal ones: CallTimeout for exactly the hung
    ones, promptly; every other call succeeds."""
    check(run(_chaos.hang_storm(front, size=4, normal=150, hung=8, lanes=16, timeout=0.5)))


def test_cancel_storm() -> None:
    """300 calls at once, half cancelled at random, then 200 cancelled about when their replies
    arrive: the cancelled callers get CancelledError, the rest their results, and no worker is
    killed (every command ends long before cancel_grace)."""
    check(run(_chaos.cancel_storm(size=4, calls=300, aligned=200, cancel_grace=3.0)))


@pytest.mark.parametrize("front", [*FRONTS, "submit"])
def test_garbage_storm(front: _chaos_procs.Front) -> None:
    """12 calls write garbage or absurd length prefixes onto their reply channel among 150 normal
    ones: ProtocolError for those (no timeout needed), results for the rest, no memory blow-up."""
    check(run(_chaos.garbage_storm(front, size=4, normal=150, bad=12, lanes=16)))


@pytest.mark.parametrize("front", FRONTS)
def test_start_close_cycles(front: _chaos_procs.Front) -> None:
    """4 cycles of start, calls, close: idle, draining calls in flight, failing queued ones with
    cancel_pending, right after a worker was killed; nothing left behind after each."""
    check(run(_chaos_cycles.cycle_storm(front, cycles=4, size=2)))


def test_sync_pool_32_threads_with_crashes_and_timeouts() -> None:
    """32 threads, 256 calls on a SyncPool; about 10% crash their worker (os._exit(7) or their
    own SIGKILL) and 5% hang in C (0.5 s timeout): each call gets exactly its own fate."""
    storm = _chaos.mixed_storm("sync", size=4, calls=256, lanes=32, hang=0.05, crash=0.1)
    check(run(storm))


def test_memory_bombs_on_a_busy_pool_are_recycled() -> None:
    """6 callers on 2 workers (the queue never empties), each call keeping 8 MiB more alive in its
    worker, max_memory=64 MiB: workers over the limit are recycled while the load runs."""
    check(run(_chaos.memory_storm(size=2, calls=120, lanes=6, mib=8, limit_mib=64)))


def test_host_sigkill_under_load_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with calls running on every worker (more queued) and grandchildren started by its
    workers is SIGKILLed: its workers and template die with it, and the next pool reaps the
    grandchildren."""
    with tempfile.TemporaryDirectory() as runtime:
        env = dict(os.environ, SNAKEDEN_RUNTIME_DIR=runtime)
        host, info = start_host_script("tests.workers.chaos_host", env=env)
        host.send_signal(signal.SIGKILL)
        host.wait(60)
        workers, helpers, grandchildren = info["workers"], info["helpers"], info["grandchildren"]
        assert len(workers) == 4 and helpers and grandchildren
        # Parent-death signal and end of file: every worker and the template die with the host.
        assert survivors([*workers, *helpers]) == []
        # What the workers started dies with them (the run's watcher), or else the next pool
        # reaps it.
        monkeypatch.setenv("SNAKEDEN_RUNTIME_DIR", runtime)
        with snakeden.SyncPool(_chaos_procs.WORKER, size=1) as pool:
            assert pool.call("echo", 1) == 1
        assert survivors(grandchildren) == []
