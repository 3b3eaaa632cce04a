"""The crash matrix, in the style of loky's: fault kind x phase -> the exact error the caller gets,
and the pool still serving afterwards. Real processes, real signals; no mocks.

Phases: start-up (importing the worker module), decoding the call (unpickling an argument),
running the command, encoding the result (pickling it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from typing import Any

import pytest

import snakeden
from tests.conftest import run
from tests.rendezvous import Rendezvous
from tests.workers.faults import FAULTS, Bomb

FAULT_MODULE = "tests.workers.faults"

# What the caller gets for a fault in a call phase (decode, run, encode). A process-level fault
# gives the same error in every phase; an exception is the command's own only while it runs (the
# pools here use pickle: the original exception object). sys.exit() fails the call where
# ProcessPoolExecutor fails it (running the command, pickling its result) and ends the worker
# where that ends it (unpickling the call).
_PROCESS_FAULTS: dict[str, tuple[type[Exception], str]] = {
    "os_exit": (snakeden.WorkerCrashed, "exited with code 7"),
    "segfault": (snakeden.WorkerCrashed, "SIGSEGV(-11)"),
    "sigkill": (snakeden.WorkerCrashed, "SIGKILL(-9)"),
    "hang": (snakeden.CallTimeout, "did not finish within"),
}
CALL_PHASE_EXPECTED: dict[str, dict[str, tuple[type[Exception], str]]] = {
    "decode": {
        "exception": (snakeden.SerializationError, "injected fault"),
        "sys_exit": (snakeden.WorkerCrashed, "exited with code 5"),
        **_PROCESS_FAULTS,
    },
    "run": {
        "exception": (RuntimeError, "injected fault"),
        "sys_exit": (snakeden.RemoteError, "SystemExit: exit code 5"),
        **_PROCESS_FAULTS,
    },
    "encode": {
        "exception": (snakeden.SerializationError, "RuntimeError: injected fault"),
        "sys_exit": (snakeden.SerializationError, "SystemExit: 5"),
        **_PROCESS_FAULTS,
    },
}

START_EXPECTED = {
    "exception": "RuntimeError: injected fault",
    "sys_exit": "SystemExit: 5",
    "os_exit": "exited with code 7",
    "segfault": "SIGSEGV(-11)",
    "sigkill": "SIGKILL(-9)",
    "hang": "did not say hello within",
}

TIMEOUT = 1.5


def _call_for(phase: str, kind: str) -> tuple[str, tuple[Any, ...]]:
    if phase == "decode":
        return "take", (Bomb(kind),)
    if phase == "run":
        return "run_fault", (kind,)
    return "result_fault", (kind,)


def _check(exc: BaseException, expected: tuple[type[Exception], str]) -> None:
    cls, text = expected
    assert type(exc) is cls, f"expected {cls.__name__}, got {type(exc).__name__}: {exc}"
    assert text in str(exc), f"{text!r} not in {exc}"
    if isinstance(exc, snakeden.WorkerCrashed) and "SIG" in text:
        assert exc.signal_name == text.split("(")[0]
        assert exc.exitcode is not None and exc.exitcode < 0


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("phase", ["decode", "run", "encode"])
@pytest.mark.parametrize("kind", FAULTS)
def test_async_call_phase_faults(phase: str, kind: str, start_method: str) -> None:
    expected = CALL_PHASE_EXPECTED[phase][kind]

    async def body() -> None:
        async with snakeden.Pool(
            FAULT_MODULE, size=2, serializer="pickle", start_method=start_method
        ) as pool:
            name, args = _call_for(phase, kind)
            bystanders = [asyncio.create_task(pool.call("echo", i)) for i in range(20)]
            with pytest.raises(Exception) as info:  # _check: the exact type
                await pool.call(name, *args, timeout=TIMEOUT)
            _check(info.value, expected)
            # Calls beside it are untouched, and the pool serves at full size again.
            assert await asyncio.gather(*bystanders) == list(range(20))
            await pool.wait_ready(timeout=60)
            assert await asyncio.gather(*(pool.call("echo", i) for i in range(10))) == list(
                range(10)
            )
            assert pool.stats().workers == 2

    run(body())


@pytest.mark.parametrize("phase", ["decode", "run", "encode"])
@pytest.mark.parametrize("kind", FAULTS)
def test_sync_call_phase_faults(phase: str, kind: str) -> None:
    expected = CALL_PHASE_EXPECTED[phase][kind]
    with snakeden.SyncPool(FAULT_MODULE, size=2, serializer="pickle") as pool:
        name, args = _call_for(phase, kind)
        bystanders = [pool.submit("echo", i) for i in range(20)]
        with pytest.raises(Exception) as info:  # _check: the exact type
            pool.call(name, *args, timeout=TIMEOUT)
        _check(info.value, expected)
        assert [f.result(timeout=60) for f in bystanders] == list(range(20))
        pool.wait_ready(timeout=60)
        assert list(pool.map("echo", range(10))) == list(range(10))


@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize(
    ("front", "start_method"), [("async", "fork"), ("async", "spawn"), ("sync", "fork")]
)
def test_startup_faults_fail_pool_start_fast_with_the_cause(
    kind: str, front: str, start_method: str
) -> None:
    target = f"tests.workers.import_{kind}"
    options: dict[str, Any] = {
        "size": 2,
        "start_timeout": 3.0 if kind == "hang" else 60.0,
        "start_method": start_method,
    }
    t0 = time.monotonic()
    with pytest.raises(snakeden.WorkerStartError) as info:
        if front == "async":

            async def body() -> None:
                async with snakeden.Pool(target, **options):
                    pass

            run(body())
        else:
            with snakeden.SyncPool(target, **options):
                pass
    elapsed = time.monotonic() - t0
    assert START_EXPECTED[kind] in str(info.value)
    assert info.value.failures
    if kind == "exception":
        # The worker's own traceback, naming the module that failed.
        assert "import_exception.py" in str(info.value)
    # Fails fast: no restart loop (a generous bound; a hung import waits out start_timeout).
    assert elapsed < 60


def test_sigkill_from_outside_mid_call_fails_only_that_call() -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            flag = Rendezvous(tmp)
            async with snakeden.Pool(FAULT_MODULE, size=2) as pool:
                victim = asyncio.create_task(pool.call("block", str(flag)))
                pid = int(await flag.wait_async())
                others = [asyncio.create_task(pool.call("echo", i)) for i in range(30)]
                os.kill(pid, signal.SIGKILL)
                with pytest.raises(snakeden.WorkerCrashed) as info:
                    await victim
                assert info.value.signal_name == "SIGKILL"
                assert "killed from outside" in str(info.value)
                assert await asyncio.gather(*others) == list(range(30))
                await pool.wait_ready(timeout=60)
                assert pool.stats().calls_crashed == 1
                assert pool.stats().restarts == 1

    run(body())


def test_crash_error_carries_last_stderr_lines() -> None:
    async def body() -> None:
        async with snakeden.Pool("snakeden.examples", size=1) as pool:
            with pytest.raises(snakeden.WorkerCrashed) as info:
                await pool.call("crash", "segfault")
            # faulthandler's report is on stderr: the crash site is named.
            assert any("in crash" in line for line in info.value.stderr_tail), (
                info.value.stderr_tail
            )
            assert "last stderr lines" in str(info.value)

    run(body())


def test_idle_worker_killed_is_replaced_without_any_call_failing() -> None:
    async def body() -> None:
        events: list[snakeden.WorkerEvent] = []
        replaced = asyncio.Event()

        def on_event(e: snakeden.WorkerEvent) -> None:
            events.append(e)
            if e.kind == "ready" and any(x.kind == "crashed" for x in events):
                replaced.set()

        async with snakeden.Pool("snakeden.examples", size=2, on_event=on_event) as pool:
            victim = pool.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            await asyncio.wait_for(replaced.wait(), 60)
            assert victim not in pool.worker_pids()
            assert await asyncio.gather(*(pool.call("add", i, 1) for i in range(20))) == [
                i + 1 for i in range(20)
            ]
            assert pool.stats().calls_crashed == 0

    run(body())


@pytest.mark.parametrize("kind", ["short", "oversized"])
@pytest.mark.parametrize("front", ["async", "sync"])
def test_garbage_from_a_worker_is_a_protocol_error_and_the_pool_heals(
    kind: str, front: str
) -> None:
    if front == "async":

        async def body() -> None:
            async with snakeden.Pool(FAULT_MODULE, size=2) as pool:
                with pytest.raises(snakeden.ProtocolError, match="broke the protocol"):
                    await pool.call("garbage", kind, timeout=60)
                await pool.wait_ready(timeout=60)
                assert await pool.map("echo", range(10)) == list(range(10))

        run(body())
    else:
        with snakeden.SyncPool(FAULT_MODULE, size=2) as pool:
            with pytest.raises(snakeden.ProtocolError, match="broke the protocol"):
                pool.call("garbage", kind, timeout=60)
            pool.wait_ready(timeout=60)
            assert list(pool.map("echo", range(10))) == list(range(10))


def test_an_error_too_large_for_a_frame_is_still_reported() -> None:
    async def body() -> None:
        async with snakeden.Pool(FAULT_MODULE, size=1, max_frame_size=64 * 1024) as pool:
            pid = await pool.call("getpid")
            with pytest.raises(ValueError) as info:
                await pool.call("huge_error", 1_000_000)
            assert isinstance(info.value, snakeden.RemoteError)
            assert info.value.type_name == "ValueError"
            assert str(info.value).startswith("xxx") and "more bytes]" in str(info.value)
            assert await pool.call("getpid") == pid  # the worker was not killed for it

    run(body())
