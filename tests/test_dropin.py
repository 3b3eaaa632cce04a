"""SyncPool as a drop-in for concurrent.futures' executors, and the asyncio Pool's matching edges.

Where the standard library's executors define the behaviour (work submitted before exit still
runs, RuntimeError after interpreter shutdown, ValueError for chunksize < 1, no stale references
once a call is done), the test checks the standard executor and snakeden against the same
expectation. Programs that exit run as real subprocesses; every wait is bounded and waits on
something (a future, a process exit, a weakref callback), never on a sleep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import gc
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import weakref
from typing import Any

import psutil
import pytest

import snakeden
from snakeden import _pool
from tests.conftest import ROOT, run
from tests.rendezvous import Rendezvous
from tests.workers.dropin import Box, Tally, fail_with, make_box, pid, unbox

EX = "snakeden.examples"
FAULTS = "tests.workers.faults"


def run_script(
    tmp_path: pathlib.Path, source: str, *args: str, name: str = "host.py"
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def assert_gone(host_pid: int, pids: list[int]) -> None:
    """Nothing a pool of ``host_pid`` started is alive: the pids it printed, and any process
    tagged with its run."""
    procs = []
    for p in psutil.process_iter(["pid", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            tag = p.environ().get("SNAKEDEN_RUN_TAG", "")
        except psutil.Error:
            continue
        if p.pid in pids or tag.startswith(f"{host_pid}-"):
            procs.append(p)
    _, alive = psutil.wait_procs(procs, timeout=15)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not alive, f"left behind by {host_pid}: {alive}"


_watching: list[weakref.ref[Any]] = []


def freed_event(obj: Any) -> threading.Event:
    """Set when ``obj`` is freed (from whichever thread drops the last reference)."""
    freed = threading.Event()
    _watching.append(weakref.ref(obj, lambda ref: (freed.set(), _watching.remove(ref))))
    return freed


# --- 2. nothing is lost at interpreter exit -----------------------------------------------------

EXIT_SCRIPT = """
    import concurrent.futures as cf
    import json
    import os
    import sys

    import snakeden
    from tests.workers.dropin import write_after

    if __name__ == "__main__":
        kind, mode, out = sys.argv[1:4]
        if kind == "snakeden":
            pool = snakeden.SyncPool(max_workers=2)
            pids = pool.worker_pids() + list(pool._core.launcher.pids())
        else:
            pool = cf.ProcessPoolExecutor(max_workers=2)
            pids = []
        for i in range(6):  # three rounds on two workers: most are still queued at exit
            pool.submit(write_after, os.path.join(out, f"{i}.txt"), str(i), 0.2)
        print(json.dumps({"pid": os.getpid(), "pids": pids}), flush=True)
        if mode == "shutdown_nowait":
            pool.shutdown(wait=False)
        # and exit: no shutdown(wait=True), no with-block
"""


@pytest.mark.parametrize("mode", ["no_shutdown", "shutdown_nowait"])
@pytest.mark.parametrize("kind", ["stdlib", "snakeden"])
def test_work_submitted_before_exit_runs_and_no_worker_is_left(
    tmp_path: pathlib.Path, kind: str, mode: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = run_script(tmp_path, EXIT_SCRIPT, kind, mode, str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[0])
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.txt" for i in range(6)]
    assert all((out / f"{i}.txt").read_text() == str(i) for i in range(6))
    if kind == "snakeden":
        assert len(info["pids"]) >= 2
    assert_gone(info["pid"], info["pids"])


LATE_SUBMIT_SCRIPT = """
    import atexit
    import concurrent.futures as cf
    import sys

    import snakeden
    from tests.workers.dropin import pid

    def late() -> None:
        # atexit hooks run after the executors' exit hooks: the interpreter is shutting down.
        try:
            pool.submit(pid)
        except RuntimeError as exc:
            print(f"refused: {exc}", flush=True)
        else:
            print("accepted", flush=True)

    if __name__ == "__main__":
        if sys.argv[1] == "snakeden":
            pool = snakeden.SyncPool(size=1)
        else:
            pool = cf.ThreadPoolExecutor(max_workers=1)
        pool.submit(pid).result(60)
        atexit.register(late)
"""


@pytest.mark.parametrize("kind", ["stdlib", "snakeden"])
def test_submit_after_interpreter_shutdown_raises_runtime_error(
    tmp_path: pathlib.Path, kind: str
) -> None:
    proc = run_script(tmp_path, LATE_SUBMIT_SCRIPT, kind)
    assert proc.returncode == 0, proc.stderr
    # The standard executors say "after shutdown" once their threads have seen the exit.
    assert proc.stdout.startswith("refused: cannot schedule new futures after")
    if kind == "snakeden":
        assert "cannot schedule new futures after interpreter shutdown" in proc.stdout


def test_a_pool_shut_down_without_waiting_is_waited_for_by_a_second_shutdown() -> None:
    pool = snakeden.SyncPool(EX, size=1)
    futs = [pool.submit("echo", i) for i in range(5)]
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        pool.submit("echo", 0)
    pool.shutdown(wait=True)
    assert [f.result(0) for f in futs] == list(range(5))
    assert pool.stats().state == "closed" and not pool.worker_pids()


def test_asyncio_pool_left_open_is_closed_when_asyncio_run_ends(tmp_path: pathlib.Path) -> None:
    async def body(flag: Rendezvous) -> tuple[snakeden.Pool, list[int]]:
        pool = await snakeden.Pool(FAULTS, size=1, cancel_grace=0.5).start()
        # One call in flight, others queued, when the main coroutine returns.
        running = asyncio.ensure_future(pool.call("block", str(flag), 3600))
        queued = [asyncio.ensure_future(pool.call("echo", i)) for i in range(3)]
        await flag.wait_async()
        assert not running.done() and not any(q.done() for q in queued)
        return pool, pool.worker_pids()

    with Rendezvous(tmp_path) as flag:
        pool, pids = asyncio.run(asyncio.wait_for(body(flag), 60))
    assert pool.stats().state == "closed"
    assert_gone(os.getpid(), pids)

    async def dropped() -> list[int]:
        # Its owner lets go of an open pool: it is not garbage while it owns processes.
        pool = await snakeden.Pool(EX, size=1).start()
        pids = pool.worker_pids()
        del pool
        gc.collect()
        return pids

    assert_gone(os.getpid(), asyncio.run(asyncio.wait_for(dropped(), 60)))

    async def closed() -> None:
        async with snakeden.Pool(EX, size=1):
            assert len(_pool._GUARDS) == 1
        assert not _pool._GUARDS  # close() ended the guard: it keeps nothing alive

    asyncio.run(asyncio.wait_for(closed(), 60))


# --- 3. bound methods and references ------------------------------------------------------------


def _nested() -> Any:
    def inner(x: int) -> int:
        return x

    return inner


def test_what_msgpack_cannot_send_is_refused_at_submit_with_what_to_do() -> None:
    with snakeden.SyncPool(EX, size=1) as pool:
        refused = {
            "lambda": (lambda x: x, "module level"),
            "nested": (_nested(), "module level"),
            "bound method": (Tally(1).add, "serializer='pickle'"),
            "partial": (functools.partial(pow, 2), "serializer='pickle'"),
            "callable object": (Tally(1), "serializer='pickle'"),
            "builtin bound method": ("abc".upper, "serializer='pickle'"),
        }
        for what, (fn, hint) in refused.items():
            with pytest.raises(snakeden.NotAReference, match="Nothing was sent") as info:
                pool.submit(fn, 1)  # at submit(), not at result()
            assert hint in str(info.value), what
            assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
            with pytest.raises(snakeden.NotAReference):
                pool.call(fn, 1)
            with pytest.raises(snakeden.NotAReference):
                pool.map(fn, [1, 2], chunksize=2)
        assert pool.stats().calls_ok == 0
        # What has a name still goes by reference: builtins, classes, classmethods, str methods.
        assert pool.call(dict.fromkeys, "ab") == {"a": None, "b": None}
        assert pool.call(str.upper, "abc") == "ABC"
        assert pool.call(Tally.named) == "Tally"
        assert pool.call(int, "42") == 42


def test_pickle_sends_bound_methods_partials_and_callable_objects_fresh_each_call() -> None:
    with snakeden.SyncPool(size=1, serializer="pickle") as pool:
        tally = Tally(10)
        assert pool.submit(tally.add, 5).result(60) == 15
        assert pool.submit(tally.add, 5).result(60) == 15  # a fresh copy each call
        assert tally.total == 10  # and the host's object is untouched
        assert pool.call(tally, 3) == 30
        assert pool.call(functools.partial(pow, 2), 10) == 1024
        assert pool.call("abc".upper) == "ABC"
        # One chunk is one call: its items share one copy, as with ProcessPoolExecutor.
        assert list(pool.map(tally.add, [1, 2, 3], chunksize=2)) == [11, 13, 13]
        with pytest.raises(snakeden.BadCall, match="add"):
            pool.call(tally.add)  # the arguments do not fit: the caller's mistake, as by name
        with pytest.raises(TypeError, match="unsupported operand"):  # the original, by pickle
            pool.call(tally.add, "x")
        # What pickle cannot send either is still refused up front.
        for fn in (lambda x: x, _nested(), functools.partial(lambda x: x, 1)):
            with pytest.raises(snakeden.NotAReference, match="module level"):
                pool.submit(fn, 1)


def test_asyncio_pool_refuses_and_sends_the_same_way() -> None:
    async def body() -> None:
        async with snakeden.Pool(EX, size=1) as pool:
            with pytest.raises(snakeden.NotAReference, match="serializer='pickle'"):
                await pool.call(Tally(1).add, 1)
            with pytest.raises(snakeden.NotAReference, match="lambda"):
                await pool.map(lambda x: x, [1, 2])
        async with snakeden.Pool(size=1, serializer="pickle") as pool:
            assert await pool.call(Tally(2).add, 3) == 5
            assert await pool.map(Tally(2), [1, 2, 3], chunksize=2) == [2, 4, 6]

    run(body())


MAIN_SCRIPT = """
    import sys

    import snakeden

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

        @classmethod
        def origin(cls) -> "Point":
            return cls(0)

    def triple(x: int) -> int:
        return 3 * x

    def point(x: int) -> Point:
        return Point(x)

    if __name__ == "__main__":
        with snakeden.SyncPool(size=1) as pool:
            print(pool.submit(triple, 14).result(60), flush=True)
        with snakeden.SyncPool(size=1, serializer="pickle") as pool:
            p = pool.call(point, 5)
            print(type(p) is Point, p.x, type(pool.call(Point.origin)) is Point, flush=True)
"""


def test_functions_of_the_main_script_run_in_the_worker(tmp_path: pathlib.Path) -> None:
    proc = run_script(tmp_path, MAIN_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["42", "True 5 True"]


def test_a_main_script_that_makes_a_pool_at_import_gets_a_clear_error(
    tmp_path: pathlib.Path,
) -> None:
    source = """
        import snakeden

        def triple(x: int) -> int:
            return 3 * x

        pool = snakeden.SyncPool(size=1)  # unguarded: would run again in every worker
        try:
            pool.submit(triple, 1).result(60)
        except snakeden.UnknownCommand as exc:
            print(exc, flush=True)
        pool.shutdown()
    """
    proc = run_script(tmp_path, source)
    assert proc.returncode == 0, proc.stderr
    assert "if __name__ ==" in proc.stdout


def test_main_of_python_dash_m_is_imported_by_name_and_of_dash_c_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.workers.dropin_main"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    source = textwrap.dedent("""
        import snakeden

        def triple(x):
            return 3 * x

        with snakeden.SyncPool(size=1) as pool:
            try:
                pool.submit(triple, 1)
            except snakeden.NotAReference as exc:
                print(exc)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", source], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "python -c" in proc.stdout and "importable module" in proc.stdout


def test_a_finished_call_keeps_no_reference_to_its_arguments_or_result() -> None:
    with snakeden.SyncPool(size=1, serializer="pickle") as pool:
        # As concurrent.futures' own test: a bound method, its future discarded at once.
        tally = Tally(1)
        freed = freed_event(tally)
        pool.submit(tally.add, 1)
        del tally
        assert freed.wait(30), "the bound method's object is still referenced"

        arg = Box(1)
        fut = pool.submit(unbox, arg)
        result = fut.result(60)
        assert result == 1
        arg_freed = freed_event(arg)
        box = pool.submit(make_box, 2).result(60)
        result_freed = freed_event(box)
        del arg, fut, box
        gc.collect()
        assert arg_freed.wait(30), "the argument is still referenced"
        assert result_freed.wait(30), "the result is still referenced"

        arg = Box(3)
        fut = pool.submit(fail_with, arg)
        with pytest.raises(ValueError, match="failed with 3"):
            fut.result(60)
        arg_freed = freed_event(arg)
        del arg, fut
        gc.collect()
        assert arg_freed.wait(30), "the argument of a failed call is still referenced"


def test_the_asyncio_pool_keeps_no_reference_either() -> None:
    async def body() -> None:
        async with snakeden.Pool(size=1, serializer="pickle") as pool:
            arg = Box(1)
            arg_freed = freed_event(arg)
            box = await pool.call(make_box, await pool.call(unbox, arg))
            result_freed = freed_event(box)
            del arg, box
            gc.collect()
            assert arg_freed.is_set() and result_freed.is_set()

    run(body())


# --- 4. familiar spellings ---------------------------------------------------------------------


def test_max_workers_is_another_name_for_size() -> None:
    with snakeden.SyncPool(EX, max_workers=2) as pool:
        assert len(pool.worker_pids()) == 2
        assert pool.submit(pid).result(60) in pool.worker_pids()
    with pytest.raises(TypeError, match="not both"):
        snakeden.SyncPool(EX, size=1, max_workers=1)
    # As ProcessPoolExecutor(max_workers=0):
    with pytest.raises(ValueError, match="max_workers"):
        cf.ProcessPoolExecutor(max_workers=0)
    with pytest.raises(ValueError, match="max_workers"):
        snakeden.SyncPool(EX, max_workers=0)
    with pytest.raises(TypeError, match="max_workers=4"):
        snakeden.SyncPool(4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_calls"):
        snakeden.SyncPool(EX, max_tasks_per_child=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="did you mean 'max_size'"):
        snakeden.SyncPool(EX, max_sise=2)  # type: ignore[call-arg]


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_chunksize_below_one_is_a_value_error(chunksize: int) -> None:
    with cf.ProcessPoolExecutor(max_workers=1) as ex, pytest.raises(ValueError):
        ex.map(pid, [1], chunksize=chunksize)
    with snakeden.SyncPool(EX, size=1) as pool:
        with pytest.raises(ValueError, match="chunksize"):
            pool.map("echo", [1], chunksize=chunksize)
        assert list(pool.map("echo", [1, 2], chunksize=1)) == [1, 2]

    async def body() -> None:
        async with snakeden.Pool(EX, size=1) as pool:
            with pytest.raises(ValueError, match="chunksize"):
                await pool.map("echo", [1], chunksize=chunksize)
            assert await pool.map("echo", [1, 2], chunksize=1) == [1, 2]

    run(body())


def test_the_wrong_with_says_which_to_use() -> None:
    async def body() -> None:
        with pytest.raises(TypeError, match=r"with snakeden\.SyncPool"):
            async with snakeden.SyncPool(EX, size=1):  # type: ignore[attr-defined]
                pass

    run(body())  # the pool it started is stopped: the autouse fixture checks
    with pytest.raises(TypeError, match=r"async with snakeden\.Pool"), snakeden.Pool(EX, size=1):
        pass


def test_runtime_error_after_shutdown_as_the_executors() -> None:
    for ex in (cf.ThreadPoolExecutor(1), snakeden.SyncPool(EX, size=1)):
        assert ex.submit(pid).result(60)
        ex.shutdown()
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(pid)
