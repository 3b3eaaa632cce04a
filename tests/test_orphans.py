"""No orphans, ever: a host killed with SIGKILL leaves no worker alive (checked in the process
table from this, separate, process), and a later pool reaps what the dead host's workers started,
without ever killing an unrelated process that reused a recorded pid."""

from __future__ import annotations

import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import tempfile

import psutil
import pytest

import snakeden
from snakeden._reaper import RunRecord, reap_leftovers
from tests.conftest import ROOT


def _start_host(method: str, runtime: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = dict(os.environ, SNAKEDEN_RUNTIME_DIR=runtime)
    host = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.host_script", method],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert host.stdout is not None
    poller = select.poll()
    poller.register(host.stdout, select.POLLIN)
    if not poller.poll(60_000):
        host.kill()
        raise AssertionError("host script never reported its pool")
    return host, json.loads(host.stdout.readline())


def _gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_host_sigkill_leaves_no_worker_and_next_pool_reaps_the_rest(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tempfile.TemporaryDirectory() as runtime:
        host, info = _start_host(method, runtime)
        workers = list(info["workers"])  # type: ignore[call-overload]
        helpers = list(info["helpers"])  # type: ignore[call-overload]
        grandchild = int(info["grandchild"])  # type: ignore[call-overload]
        assert len(workers) == 2 and (helpers if method == "fork" else not helpers)
        assert all(psutil.pid_exists(p) for p in [*workers, *helpers, grandchild])
        assert list(pathlib.Path(runtime).glob("*.json"))  # the host's run record

        host.send_signal(signal.SIGKILL)
        host.wait(60)
        # Parent-death signal and end-of-file: every worker (and the template) dies with it.
        assert _gone([*workers, *helpers]) == []

        # What a worker started itself survives its worker... until the next pool starts.
        monkeypatch.setenv("SNAKEDEN_RUNTIME_DIR", runtime)
        with snakeden.SyncPool("snakeden.examples", size=1) as pool:
            assert pool.call("add", 1, 1) == 2
        assert _gone([grandchild]) == []
        assert [p.name for p in pathlib.Path(runtime).glob("*.json")] == []


def test_a_reused_pid_is_never_killed() -> None:
    with tempfile.TemporaryDirectory() as runtime:
        # A host that is gone, whose record names a pid now used by an unrelated process.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        bystander = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        try:
            record = pathlib.Path(runtime, "1-deadbeef.json")
            record.write_text(
                json.dumps(
                    {
                        "run_tag": "1-deadbeef",
                        "host_pid": dead.pid,
                        "host_start": 0.0,
                        "pids": [bystander.pid],
                    }
                )
            )
            assert reap_leftovers(pathlib.Path(runtime)) == []
            assert bystander.poll() is None  # still running
            assert not record.exists()  # the stale record is cleaned up
        finally:
            bystander.kill()
            bystander.wait()


def test_a_live_hosts_record_is_left_alone() -> None:
    with tempfile.TemporaryDirectory() as runtime:
        rec = RunRecord(f"{os.getpid()}-live", pathlib.Path(runtime))
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()", "--snakeden-run=" + rec.run_tag],
            stdin=subprocess.PIPE,
        )
        try:
            rec.add(child.pid)
            assert reap_leftovers(pathlib.Path(runtime)) == []
            assert child.poll() is None
            assert rec.path.exists()
        finally:
            child.kill()
            child.wait()
            rec.remove()
