"""``snakeden map``: JSON Lines through a pool, as a real subprocess."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.rendezvous import Rendezvous
from tests.workers.jobs import CRASH_ON

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def snakeden_map(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "snakeden", "map", "tests.workers.jobs", "job", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
        **kw,  # type: ignore[call-overload]
    )


def expected(i: int) -> dict[str, object]:
    if i == CRASH_ON:
        return {"type": "WorkerCrashed"}
    if i % 1000 == 7:
        return {"type": "ValueError", "message": f"bad line {i}"}
    if i % 1000 == 8:
        return {"type": "TypeError"}
    return {"result": 2 * i}


@pytest.mark.parametrize("chunksize", ["1", "16"])
def test_ten_thousand_lines_in_order_with_failures_and_a_crash(
    tmp_path: pathlib.Path, chunksize: str
) -> None:
    n = 10_000
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(n)))
    proc = snakeden_map(str(src), "--workers", "2", "--chunksize", chunksize)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err.decode()
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["line"] for r in records] == list(range(1, n + 1))  # every line, in order
    for i, r in enumerate(records):
        want = expected(i)
        if "result" in want:
            assert r == {"line": i + 1, "result": want["result"]}
        else:
            assert r["error"]["type"] == want["type"], r
            if "message" in want:
                assert r["error"]["message"] == want["message"]
    crash = records[CRASH_ON]["error"]["message"]
    assert "died while running 'job'" in crash and "exited with code 3" in crash
    assert sum("error" in r for r in records) == 10 + 10 + 1


def test_unordered_writes_every_line_once(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(500)) + "not json\n\n[1]\n")
    proc = snakeden_map(str(src), "-w", "2", "-c", "8", "--unordered")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert sorted(r["line"] for r in records) == [*range(1, 502), 503]
    by_line = {r["line"]: r for r in records}
    assert by_line[501]["error"]["type"] == "JSONDecodeError"
    assert by_line[503]["error"]["type"] == "TypeError"  # a list: list % 1000
    assert by_line[10]["result"] == 18


def test_all_good_is_exit_status_zero_from_stdin() -> None:
    proc = snakeden_map("-w", "1", stdin=subprocess.PIPE)
    out, err = proc.communicate(b"1\n2\n3\n", timeout=120)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        '{"line": 1, "result": 2}',
        '{"line": 2, "result": 4}',
        '{"line": 3, "result": 6}',
    ]


def test_ctrl_c_finishes_running_calls_and_flushes_what_was_done(tmp_path: pathlib.Path) -> None:
    started = Rendezvous(tmp_path)
    proc = snakeden_map("-w", "2", stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"".join(f"{i}\n".encode() for i in range(20)))
    proc.stdin.write(json.dumps({"rendezvous": str(started), "sleep": 1.0}).encode() + b"\n")
    proc.stdin.flush()
    head = [json.loads(proc.stdout.readline()) for _ in range(20)]  # flushed while streaming
    assert [r["line"] for r in head] == list(range(1, 21))
    started.wait()  # line 21 is running in a worker
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert [json.loads(line) for line in rest.decode().splitlines()] == [
        {"line": 21, "result": "slept"}
    ]
    assert b"interrupted" in err
