"""The control socket, ``snakeden stats`` and ``snakeden top`` (rendered, and in tmux)."""

from __future__ import annotations

import json
import os
import pathlib
import select
import shlex
import shutil
import stat
import subprocess
import sys
import threading

import pytest

import snakeden
from snakeden import control
from snakeden._top import render
from tests.conftest import ROOT
from tests.rendezvous import Rendezvous

EX = "snakeden.examples"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def test_snapshot_shows_workers_running_commands_and_counts(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pool.sock"
    with snakeden.SyncPool(EX, size=2) as pool, control.serve(pool, path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        for i in range(5):
            pool.call("add", i, i)
        with pytest.raises(snakeden.RemoteError):
            pool.call("fail")
        snap = control.request(path)
        assert snap["name"] == EX and snap["state"] == "running"
        assert snap["calls"]["ok"] == 5 and snap["calls"]["failed"] == 1
        assert sorted(w["pid"] for w in snap["workers"]) == sorted(pool.worker_pids())
        assert all(w["state"] == "idle" and w["command"] is None for w in snap["workers"])
        assert all(w["rss"] > 1_000_000 for w in snap["workers"])
        assert snap["rates"]["calls_per_s"] >= 0
        assert control.request(path, "nonsense")["error"].startswith("unknown request")
    assert not path.exists()


def test_a_busy_worker_shows_its_command_and_for_how_long(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pool.sock"
    started = Rendezvous(tmp_path)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            pool.call("job", {"rendezvous": str(started), "sleep": 60})
        except snakeden.WorkerCrashed as exc:
            errors.append(exc)

    with snakeden.SyncPool("tests.workers.jobs", size=1) as pool, control.serve(pool, path):
        t = threading.Thread(target=caller)
        t.start()
        try:
            started.wait()  # the call is running in the worker
            snap = control.request(path)
        finally:
            os.kill(pool.worker_pids()[0], 9)  # end it: the caller gets a crash
            t.join(60)
    w = snap["workers"][0]
    assert w["state"] == "busy" and w["command"] == "job"
    assert 0 <= w["running_for"] < 60
    assert snap["in_flight"] == 1
    assert len(errors) == 1


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: pathlib.Path) -> None:
    import socket

    path = tmp_path / "pool.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with snakeden.SyncPool(EX, size=1) as pool, control.serve(pool, path):
        with pytest.raises(OSError, match="in use"):
            control.serve(pool, path)
        assert control.request(path)["state"] == "running"


def test_stats_cli_json_and_table(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pool.sock"
    with snakeden.SyncPool(EX, size=2) as pool, control.serve(pool, path):
        pool.call("add", 1, 2)
        pids = pool.worker_pids()
        out = subprocess.run(
            [sys.executable, "-m", "snakeden", "stats", str(path), "--json"],
            capture_output=True,
            env=ENV,
            timeout=60,
            check=True,
        ).stdout
        snap = json.loads(out)
        assert sorted(w["pid"] for w in snap["workers"]) == sorted(pids)
        assert snap["calls"]["ok"] == 1
        text = subprocess.run(
            [sys.executable, "-m", "snakeden", "stats", str(path)],
            capture_output=True,
            env={**ENV, "COLUMNS": "160"},
            timeout=60,
            check=True,
        ).stdout.decode()
        assert all(str(pid) in text for pid in pids) and "calls ok 1" in text


def test_render_shows_pids_commands_and_totals() -> None:
    from rich.console import Console

    snap = {
        "name": "mod", "state": "running", "host_pid": 1, "size": 2, "in_flight": 1,
        "queued": 3, "calls": {"ok": 10, "failed": 1, "timeout": 0, "crashed": 2},
        "restarts": 2, "restarts_by_cause": {"crashed": 2}, "latency_mean": 0.002,
        "rates": {"calls_per_s": 12.5, "utilization": 0.5},
        "workers": [
            {"id": "w1", "pid": 4242, "state": "busy", "command": "predict",
             "running_for": 3.25, "calls": 7, "utilization": 0.25, "rss": 50 * 2**20, "age": 90},
            {"id": "w2", "pid": 4343, "state": "idle", "command": None, "running_for": None,
             "calls": 3, "utilization": 0.0, "rss": None, "age": 0.5},
        ],
    }  # fmt: skip
    console = Console(width=160, record=True, color_system=None)
    console.print(render(snap))
    text = console.export_text()
    for part in ("4242", "4343", "predict", "3.2s", "50.0 MiB", "12.5 calls/s", "queued 3",
                 "restarts 2 (crashed 2)", "utilisation 50%"):  # fmt: skip
        assert part in text, part


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_top_in_a_real_terminal_shows_the_worker_pids(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pool.sock"
    screen = tmp_path / "screen"
    os.mkfifo(screen)
    server = f"snakeden-test-{os.getpid()}"
    tmux = ["tmux", "-L", server]
    top = shlex.join([sys.executable, "-m", "snakeden", "top", str(path)])
    with snakeden.SyncPool(EX, size=2) as pool, control.serve(pool, path):
        pids = [str(p) for p in pool.worker_pids()]
        # The pane waits for a key, so that its output is piped to us from the first byte.
        subprocess.run(
            [*tmux, "new-session", "-d", "-x", "150", "-y", "30",
             f"env PYTHONPATH={shlex.quote(ENV['PYTHONPATH'])} sh -c 'read x; exec {top}'"],
            check=True, timeout=30,
        )  # fmt: skip
        try:
            fd = os.open(screen, os.O_RDONLY | os.O_NONBLOCK)
            subprocess.run(
                [*tmux, "pipe-pane", "-o", f"cat > {shlex.quote(str(screen))}"],
                check=True,
                timeout=30,
            )
            subprocess.run([*tmux, "send-keys", "Enter"], check=True, timeout=30)
            seen = b""
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not all(p.encode() in seen for p in pids):
                assert poller.poll(60_000), f"top never showed {pids}: {seen[-2000:]!r}"
                try:
                    seen += os.read(fd, 65536)
                except BlockingIOError:
                    pass
            os.close(fd)
            shown = subprocess.run(
                [*tmux, "capture-pane", "-p"], check=True, timeout=30, capture_output=True
            ).stdout.decode()
            assert all(p in shown for p in pids), shown
            assert "snakeden.examples" in shown and "idle" in shown
        finally:
            subprocess.run([*tmux, "kill-server"], check=False, timeout=30)
