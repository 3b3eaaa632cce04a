"""The pool's promises hold for a worker in another language: Node.js workers started from an
argv (``command=``) get the handshake, crash isolation with exit code or signal, kill on timeout,
recycling, and leave nothing behind when the host is SIGKILLed. And a program that is not a
worker fails the pool's start fast, saying what went wrong."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading

import psutil
import pytest

import snakeden
from tests.conftest import ROOT, run, start_host_script

NODE_DIR = ROOT / "node"
NODE_COMMAND = [
    "node",
    str(NODE_DIR / "bin" / "snakeden-worker.js"),
    str(NODE_DIR / "examples" / "conformance_worker.js"),
]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir(),
    reason="node, or node/node_modules (npm ci in node/), is missing",
)


def test_calls_errors_and_batches_through_a_sync_pool() -> None:
    with snakeden.SyncPool(command=NODE_COMMAND, size=2) as pool:
        assert pool.call("add", 2, 3) == 5
        assert pool.call("echo", {"b": b"\x00", "n": [None, 1.5, 2**64 - 1]}) == {
            "b": b"\x00",
            "n": [None, 1.5, 2**64 - 1],
        }
        with pytest.raises(snakeden.RemoteError, match="Error: boom") as info:
            pool.call("fail", "boom")
        assert "conformance_worker.js" in str(info.value.remote_traceback)
        with pytest.raises(snakeden.UnknownCommand):
            pool.call("nope")
        assert list(pool.map("add", [1, 3], [2, 4], chunksize=2)) == [3, 7]  # BATCH frames


def test_target_is_appended_to_the_command() -> None:
    runtime, worker = NODE_COMMAND[:2], NODE_COMMAND[2]
    with snakeden.SyncPool(worker, command=runtime, size=1) as pool:
        assert pool.call("add", "a", "b") == "ab"


def test_async_pool_cancel_aborts_the_node_call() -> None:
    async def body() -> None:
        async with snakeden.Pool(command=NODE_COMMAND, size=1, cancel_grace=30) as pool:
            pid = await pool.call("pid")
            task = asyncio.ensure_future(pool.call("sleep", 60_000))
            # A few turns of the loop (no timed sleep): an idle worker takes the call at once.
            for _ in range(10):
                await asyncio.sleep(0)
            assert pool.stats().in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The worker answered the CANCEL (AbortSignal) instead of being killed after the grace.
            assert await pool.call("pid") == pid

    run(body())


@pytest.mark.parametrize(
    ("how", "error", "text"),
    [
        ("sigkill", snakeden.WorkerCrashed, "SIGKILL(-9)"),
        ("exit", snakeden.WorkerCrashed, "exited with code 3"),
        ("hang", snakeden.CallTimeout, "did not finish within"),
    ],
)
def test_crash_matrix(how: str, error: type[Exception], text: str) -> None:
    with snakeden.SyncPool(command=NODE_COMMAND, size=2, call_timeout=1.5) as pool:
        before = set(pool.worker_pids())
        with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
            pool.call("crash", how)
        # Still serving, the dead worker replaced.
        assert [pool.call("add", i, 1) for i in range(4)] == [1, 2, 3, 4]
        pool.wait_ready()
        assert len(set(pool.worker_pids()) - before) == 1


def test_recycled_after_max_calls() -> None:
    replaced = threading.Event()

    def on_event(ev: snakeden.WorkerEvent) -> None:
        if ev.kind == "replaced":
            replaced.set()

    with snakeden.SyncPool(command=NODE_COMMAND, size=1, max_calls=1, on_event=on_event) as pool:
        first = pool.call("pid")
        pool.call("pid")  # past max_calls=1 (exact: no jitter below 10 calls): recycled by now
        assert replaced.wait(30)
        assert pool.call("pid") != first


def test_host_sigkill_leaves_no_node_process() -> None:
    host, info = start_host_script("tests.workers.node_host_script")
    pids = [*info["workers"], info["grandchild"], info["watcher"]]
    assert all(psutil.pid_exists(p) for p in pids)
    host.send_signal(signal.SIGKILL)
    host.wait(60)
    procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


# --- programs that are not workers -------------------------------------------------------------


def _start_error(command: list[str], **options: object) -> str:
    with (
        pytest.raises(snakeden.WorkerStartError) as info,
        snakeden.SyncPool(command=command, size=1, **options),  # type: ignore[arg-type]
    ):
        pass
    return str(info.value)


def test_a_program_that_prints_garbage_and_exits() -> None:
    msg = _start_error(["node", "-e", "console.log('hello from not a worker')"])
    assert "died during start-up: exited with code 0" in msg
    assert "hello from not a worker" in msg  # its stdout is shown


def test_a_program_that_exits_at_once_shows_its_stderr() -> None:
    msg = _start_error(["node", "-e", "console.error('no config'); process.exit(2)"])
    assert "exited with code 2" in msg and "no config" in msg


def test_a_program_that_never_says_hello() -> None:
    msg = _start_error(["node", "-e", "setInterval(() => {}, 1000)"], start_timeout=1.0)
    assert "did not say hello within 1.0s" in msg and "not a snakeden worker" in msg


def test_a_program_writing_garbage_on_the_channel() -> None:
    script = (
        "const fd = Number(process.env.SNAKEDEN_FDS.split(',')[1]);"
        "require('fs').writeSync(fd, 'HTTP/1.1 200 OK\\r\\n\\r\\n'); setInterval(() => {}, 1000)"
    )
    msg = _start_error(["node", "-e", script])
    assert "not snakeden frames" in msg


def test_a_worker_of_another_protocol_version() -> None:
    script = (
        "const { pack, encodeFrame } = require(process.argv[1]);"
        "const fd = Number(process.env.SNAKEDEN_FDS.split(',')[1]);"
        "require('fs').writeSync(fd, encodeFrame(1, 0, pack({protocol: 2, pid: process.pid,"
        " commands: [], worker_id: 'x', runtime: 'future'}))); setInterval(() => {}, 1000)"
    )
    msg = _start_error(["node", "-e", script, str(NODE_DIR / "lib" / "protocol.js")])
    assert "speaks protocol 2" in msg


def test_a_missing_worker_module_is_diagnosed() -> None:
    msg = _start_error([*NODE_COMMAND[:2], "/nonexistent/worker.js"])
    assert "failed to start" in msg and "Cannot find module" in msg


def test_a_missing_program() -> None:
    msg = _start_error(["/nonexistent/program"])
    assert "cannot start worker" in msg and "/nonexistent/program" in msg


def test_command_option_is_checked() -> None:
    with pytest.raises(TypeError, match="argv"):
        snakeden.SyncPool(command="node worker.js")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fork"):
        snakeden.SyncPool(command=NODE_COMMAND, start_method="fork")


def test_a_session_is_refused_clearly_not_hung() -> None:
    # The Node runtime does not list the "session" feature: opening a session says so at once.
    with snakeden.SyncPool(command=NODE_COMMAND, size=1) as pool:
        with pytest.raises(snakeden.SessionsUnsupported, match="'session' feature"):
            pool.session().open()
        assert pool.call("add", 2, 3) == 5  # the pool is unaffected
