"""The conformance kit: the Python and the Node runtime pass every case; each deliberate fault of
a broken worker is caught by the right case, with a reason that names the fault."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import snakeden.conformance as kit
from tests.conftest import ROOT

PY_WORKER = [sys.executable, "-m", "snakeden.worker", "snakeden.conformance.pyworker"]
NODE_BIN = ROOT / "node" / "bin" / "snakeden-worker.js"
NODE_WORKER = ["node", str(NODE_BIN), str(ROOT / "node" / "examples" / "conformance_worker.js")]
node_ready = pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "node" / "node_modules").is_dir(),
    reason="node, or node/node_modules (npm ci in node/), is missing",
)


def _failures(results: list[kit.CaseResult]) -> dict[str, str]:
    return {r.name: r.reason for r in results if not r.ok}


def test_python_runtime_passes_the_kit() -> None:
    results = kit.run_kit(PY_WORKER)
    assert _failures(results) == {}
    assert len(results) > 60
    # The Python runtime offers pickle, so the two "non-Python worker" vectors do not apply.
    assert {r.name for r in results if r.skipped} == {
        "error.pickle_refused",
        "error.by_reference_refused",
    }
    # It lists "session": the session vectors ran (a worker without the feature skips them).
    ran = {r.name for r in results if r.ok and not r.skipped}
    assert {"session.unknown_session", "session.closed_session", "session.short_body"} <= ran


@node_ready
def test_node_runtime_passes_the_kit() -> None:
    results = kit.run_kit(NODE_WORKER)
    assert _failures(results) == {}
    # The Node runtime lists none of the optional features (streams, sessions): their vectors,
    # and only those, are skipped.
    skipped = {r.name for r in results if r.skipped}
    assert skipped and {n.split(".")[0] for n in skipped} <= {"stream", "session"}


def _broken(fault: str) -> list[str]:
    return [sys.executable, "-m", "tests.workers.broken_worker", fault]


@pytest.mark.parametrize(
    ("fault", "case", "reason"),
    [
        ("bad_length", "handshake", "length prefix"),
        ("no_hello", "handshake", "no HELLO: nothing on the channel"),
        ("stdout_frames", "handshake", "a HELLO frame arrived on stdout"),
        ("wrong_id", "call.add", "expected a reply with id"),
    ],
)
def test_the_kit_names_each_fault(
    fault: str, case: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The faults that show as silence are found by a timeout: keep it short here.
    monkeypatch.setattr(kit, "TIMEOUT", 1.0)
    results = {r.name: r for r in kit.run_kit(_broken(fault), cwd=str(ROOT))}
    assert not results[case].ok
    assert reason in results[case].reason, results[case].reason


def test_the_cli_reports_and_exits_non_zero() -> None:
    env = dict(os.environ)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakeden",
            "conformance",
            "--timeout",
            "1",
            "--",
            *_broken("wrong_id"),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "PASS handshake" in out.stdout
    assert "FAIL call.add: expected a reply with id" in out.stdout
    assert "failed" in out.stdout.splitlines()[-1]
