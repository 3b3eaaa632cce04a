"""``SyncPool.submit``'s pipelining (``_submit_sync``): a dispatcher thread keeps queued calls
in its worker's pipe behind the running one. The same promises as the asyncio front's: a crash
fails only the call the worker began, and the calls behind it run on another worker; a call
behind a long one is taken back (here by moving the pool's injected clock past ``BEHIND_LIMIT``)
and runs on the first worker to come free, so calls that wait for one another finish.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest

import snakeden
from tests.rendezvous import Rendezvous, held_calls

FAULTS = "tests.workers.faults"
BOUND = 60.0  # generous: a loaded machine is slow, never this slow


def _queue_holds(pool: snakeden.SyncPool, n: int) -> None:
    """Wait until ``n`` calls wait in the dispatch queue (the lanes took or gave back the rest)."""
    assert pool._queue.wait_for(n, BOUND), f"the dispatch queue never held {n} calls"


def _lanes(pool: snakeden.SyncPool) -> dict[int | None, int]:
    """Worker pid -> calls in flight in the lane serving it."""
    with pool._lock:
        return {
            lane.worker.pid if lane.worker else None: len(lane.inflight) for lane in pool._serving
        }


def test_a_crash_fails_only_the_running_call_and_those_behind_it_run_elsewhere() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flag, log = Rendezvous(tmp), pathlib.Path(tmp, "log")
        release = os.path.join(tmp, "release")
        os.mkfifo(release)
        with snakeden.SyncPool(FAULTS, size=1, clock=lambda: 0.0, pipeline=4) as pool:
            head = pool.submit("exit_when_told", str(flag), release)
            victim = int(flag.wait())
            behind = [pool.submit("record", str(log), f"b{i}") for i in range(2)]
            behind.append(pool.submit("getpid"))
            _queue_holds(pool, 0)  # all three in the worker's pipe, behind the running call
            assert _lanes(pool) == {victim: 4}
            pathlib.Path(release).write_text("x")
            with pytest.raises(snakeden.WorkerCrashed, match="exit_when_told"):
                head.result(BOUND)
            *tokens, pid = (f.result(BOUND) for f in behind)
            assert tokens == ["b0", "b1"] and pid != victim
            assert sorted(log.read_text().split()) == ["b0", "b1"]  # once each
            s = pool.stats()
            assert s.calls_crashed == 1 and s.calls_redispatched == 3 and s.calls_ok == 3


def test_garbage_fails_the_call_that_wrote_it_and_those_behind_it_run_elsewhere() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flag = Rendezvous(tmp)
        release = os.path.join(tmp, "release")
        os.mkfifo(release)
        with snakeden.SyncPool(FAULTS, size=1, clock=lambda: 0.0, pipeline=4) as pool:
            head = pool.submit("garbage_when_released", str(flag), release)
            victim = int(flag.wait())
            behind = [pool.submit("echo", i) for i in range(3)]
            _queue_holds(pool, 0)
            assert _lanes(pool) == {victim: 4}
            pathlib.Path(release).write_text("x")
            with pytest.raises(snakeden.ProtocolError, match="garbage_when_released"):
                head.result(BOUND)
            assert [f.result(BOUND) for f in behind] == [0, 1, 2]
            s = pool.stats()
            assert s.calls_crashed == 1 and s.calls_redispatched == 3 and s.calls_ok == 3
            assert victim not in pool.worker_pids()


def test_a_call_behind_one_that_waits_for_it_is_taken_back_and_runs_on_a_free_worker() -> None:
    """A barrier across calls: the running call waits for the call behind it. Once the running
    call is older than BEHIND_LIMIT the lane takes back what its worker has not begun; the first
    worker to come free runs it, and both finish. It runs once."""
    now = [0.0]
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp, "log")
        flags, releases = held_calls(tmp, 2)
        with snakeden.SyncPool(FAULTS, size=2, clock=lambda: now[0], pipeline=2) as pool:
            held = []
            pids = []
            for f, r in zip(flags, releases, strict=True):
                held.append(pool.submit("block_until", str(f), r))
                pids.append(int(f.wait()))  # the second went to the idle worker, not behind
            assert sorted(_lanes(pool)) == sorted(pids)
            filler = pool.submit("getpid")  # fills one lane (pipeline=2)
            _queue_holds(pool, 0)
            j = pids.index(next(pid for pid, n in _lanes(pool).items() if n == 2))
            k = 1 - j
            # The only lane with room is the one whose running call waits for this one.
            barrier = pool.submit("record_and_release", str(log), "ran", releases[k])
            _queue_holds(pool, 0)
            assert _lanes(pool) == {pids[0]: 2, pids[1]: 2}
            now[0] = 1.0  # both running calls are now old: what waits behind them comes back
            _queue_holds(pool, 2)
            pathlib.Path(releases[j]).write_text("x")
            assert barrier.result(BOUND) == pids[j]  # on the worker that came free
            # Given back by two lanes in either order: the filler ran on one of them.
            assert filler.result(BOUND) in pids
            assert [h.result(BOUND) for h in held] == [None, None]
            s = pool.stats()
            assert s.calls_taken_back == 2 and s.restarts == 0 and s.calls_ok == 4
        # Closed: the worker it was taken from read it (before SHUTDOWN) and skipped it.
        assert log.read_text().split() == ["ran"]


def test_calls_behind_others_come_back_in_order_with_their_own_results_and_errors() -> None:
    """Many calls through the lanes: each future gets its own call's result or exception."""
    with snakeden.SyncPool(FAULTS, size=2, pipeline=8) as pool:
        futures = [
            pool.submit("run_fault", "exception") if i % 7 == 3 else pool.submit("echo", i)
            for i in range(500)
        ]
        for i, f in enumerate(futures):
            if i % 7 == 3:
                with pytest.raises(RuntimeError, match="injected fault"):
                    f.result(BOUND)
            else:
                assert f.result(BOUND) == i
        s = pool.stats()
        assert s.calls_ok + s.calls_failed == 500 and s.calls_failed == len(range(3, 500, 7))
