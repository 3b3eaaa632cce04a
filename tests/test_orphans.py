"""No orphans, ever: a host killed with SIGKILL leaves no worker alive (checked in the process
table from this, separate, process), and a later pool reaps what the dead host's workers started,
without ever killing an unrelated process that reused a recorded pid."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import psutil
import pytest

import snakeden
from snakeden._reaper import RunRecord, reap_leftovers
from tests.conftest import start_host_script, survivors


def _start_host(method: str, runtime: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    env = dict(os.environ, SNAKEDEN_RUNTIME_DIR=runtime)
    return start_host_script("tests.workers.host_script", method, env=env)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_host_sigkill_leaves_nothing_the_watcher_kills_grandchildren(method: str) -> None:
    with tempfile.TemporaryDirectory() as runtime:
        host, info = _start_host(method, runtime)
        workers = list(info["workers"])  # type: ignore[call-overload]
        helpers = list(info["helpers"])  # type: ignore[call-overload]
        grandchild = int(info["grandchild"])  # type: ignore[call-overload]
        watcher = int(info["watcher"])  # type: ignore[call-overload]
        assert len(workers) == 2 and (helpers if method == "fork" else not helpers)
        assert all(psutil.pid_exists(p) for p in [*workers, *helpers, grandchild, watcher])

        host.send_signal(signal.SIGKILL)
        host.wait(60)
        # Parent-death signal and end-of-file: every worker (and the template) dies with it;
        # what a worker started itself is killed by the run's watcher, which then leaves.
        assert survivors([*workers, *helpers, grandchild, watcher]) == []


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_without_its_watcher_a_dead_hosts_leftovers_are_reaped_by_the_next_pool(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tempfile.TemporaryDirectory() as runtime:
        host, info = _start_host(method, runtime)
        workers = list(info["workers"])  # type: ignore[call-overload]
        helpers = list(info["helpers"])  # type: ignore[call-overload]
        grandchild = int(info["grandchild"])  # type: ignore[call-overload]
        assert list(pathlib.Path(runtime).glob("*.json"))  # the host's run record
        os.kill(int(info["watcher"]), signal.SIGKILL)  # type: ignore[call-overload]
        host.send_signal(signal.SIGKILL)
        host.wait(60)
        assert survivors([*workers, *helpers]) == []

        # What a worker started itself survives its worker... until the next pool starts. With
        # the fork method the template may see the host's end before its own parent-death
        # signal and kill its workers' groups itself, the grandchild with them (it failed this
        # assertion about one run in four): only spawn, which has no template, is sure to
        # leave it for the reaper. Either way it is gone once the next pool has started.
        if method == "spawn":
            assert psutil.pid_exists(grandchild)
        monkeypatch.setenv("SNAKEDEN_RUNTIME_DIR", runtime)
        with snakeden.SyncPool("snakeden.examples", size=1) as pool:
            assert pool.call("add", 1, 1) == 2
        assert survivors([grandchild]) == []
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


def test_the_record_file_follows_the_pids_and_goes_with_the_pool() -> None:
    with tempfile.TemporaryDirectory() as runtime:
        rec = RunRecord(f"{os.getpid()}-follows", pathlib.Path(runtime))
        rec.write()  # the pool's start: the file exists at once
        assert json.loads(rec.path.read_text())["pids"] == []
        # Later changes are written by the record's own thread, several in one write.
        rec.add(11)
        rec.add(12)
        rec.discard(11)
        assert rec.flush(60)
        assert json.loads(rec.path.read_text())["pids"] == [12]
        rec.add(13)  # still to be written when the pool closes: it must not bring the file back
        rec.remove()
        assert not rec.path.exists()
        assert not [t for t in threading.enumerate() if t.name == "snakeden-run-record"]


# --- the run watcher: what workers started dies with the host, within milliseconds ---------------


def _start_watcher_host(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    return start_host_script("tests.workers.watcher_host", *args)


def _wait_exits(pids: list[int], timeout: float) -> tuple[float, list[int]]:
    """Wait for processes that are not our children to exit (pidfds: no polling); return the
    time the last one took and those still running after ``timeout``."""
    started = time.monotonic()
    fds: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                pass
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        deadline = started + timeout
        pending = set(fds)
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                pending.discard(fd)
        return time.monotonic() - started, sorted(fds[fd] for fd in pending)
    finally:
        for fd in fds:
            os.close(fd)


def _holders(name: str, pids: list[int]) -> list[int]:
    """Which of ``pids`` hold an open file described as ``name`` (e.g. ``pipe:[123]``)."""
    holding = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == name:
                        holding.append(pid)
                        break
    return holding


def _describe(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            found.append(f"{pid} {p.name()} {p.status()} pgid={os.getpgid(pid)}")
    return found


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_exits(pids, 30.0)


def _tag() -> str:
    # Prefixed with our pid: the leftover check after each test covers the run's processes.
    return f"{os.getpid()}-watch{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("mode", ["announced", "tagged", "exited"])
def test_watcher_kills_what_workers_started_when_the_host_is_killed(mode: str) -> None:
    # What tells the watcher that the worker's group is the run's, see watcher_host.py.
    host, info = _start_watcher_host("run", _tag(), mode)
    run = [info["worker"], info["tagged"], info["cleared"], info["detached"]]
    bystanders = info["bystanders"]
    try:
        # Only the host and the watcher hold the pipe: no worker, grandchild or forked child.
        assert _holders(info["pipe"], [*run, *bystanders]) == []
        assert _holders(info["pipe"], [info["host"], info["watcher"]]) == [
            info["host"],
            info["watcher"],
        ]

        host.send_signal(signal.SIGKILL)
        took, alive = _wait_exits(run, 10.0)
        print(f"run ({mode}) killed {took * 1000:.0f} ms after the host's SIGKILL")
        assert alive == [], f"left alive: {_describe(alive)} of {info}"
        _, watcher_alive = _wait_exits([info["watcher"]], 30.0)
        assert watcher_alive == [], "the watcher did not exit after its kill pass"
        # Its pass is over: whatever has no tag or group evidence is untouched.
        assert all(psutil.pid_exists(p) for p in bystanders)
        assert not [p for p in bystanders if psutil.Process(p).status() == "zombie"]
    finally:
        host.kill()
        host.wait(60)
        _kill_all([*run, *bystanders])


def test_watcher_never_kills_an_unrelated_process() -> None:
    tag = _tag()
    # The same tag with one more character, and no tag at all in the host's own session.
    lookalike = subprocess.Popen(
        ["sleep", "1000"], env=dict(os.environ, SNAKEDEN_RUN_TAG=tag + "0"), process_group=0
    )
    untagged = subprocess.Popen(["sleep", "1000"], process_group=0)
    host, info = _start_watcher_host("run", tag, "announced")
    try:
        host.send_signal(signal.SIGKILL)
        _, watcher_alive = _wait_exits([info["watcher"]], 30.0)
        assert watcher_alive == []
        for proc in (lookalike, untagged):
            assert proc.poll() is None
        for pid in info["bystanders"]:
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    finally:
        host.kill()
        host.wait(60)
        _kill_all(
            [info["worker"], info["tagged"], info["cleared"], info["detached"], *info["bystanders"]]
        )
        for proc in (lookalike, untagged):
            proc.kill()
            proc.wait()


def test_watcher_clean_close_kills_nothing() -> None:
    host, info = _start_watcher_host("run", _tag(), "announced")
    everyone = [
        info["worker"],
        info["tagged"],
        info["cleared"],
        info["detached"],
        *info["bystanders"],
    ]
    assert host.stdin is not None and host.stdout is not None
    try:
        host.stdin.write("close\n")
        host.stdin.flush()
        assert json.loads(host.stdout.readline()) == {"watcher_rc": 0}
        assert not psutil.pid_exists(info["watcher"])  # reaped by close()
        host.stdin.close()
        assert host.wait(60) == 0
        # The host is gone too, and still nothing was killed but the worker (parent death).
        _, alive = _wait_exits([info["worker"]], 30.0)
        assert alive == []
        for pid in [info["tagged"], info["cleared"], info["detached"], *info["bystanders"]]:
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    finally:
        host.kill()
        host.wait(60)
        _kill_all(everyone)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_watcher_with_a_real_pool(method: str) -> None:
    host, info = _start_watcher_host("pool", method)
    workers, helpers = list(info["workers"]), list(info["helpers"])
    grandchild = int(info["grandchild"])
    try:
        # Nothing the pool started holds a watcher's pipe, so end-of-file comes with the host.
        for pipe in info["pipes"]:
            assert _holders(pipe, [*workers, *helpers, grandchild]) == []
        host.send_signal(signal.SIGKILL)
        took, alive = _wait_exits([*workers, *helpers, grandchild], 10.0)
        print(f"pool ({method}) gone {took * 1000:.0f} ms after the host's SIGKILL")
        assert alive == [], f"left alive: {_describe(alive)}"  # no next pool needed
        assert _wait_exits(info["watchers"], 30.0)[1] == []
    finally:
        host.kill()
        host.wait(60)
        _kill_all([*workers, *helpers, grandchild])
