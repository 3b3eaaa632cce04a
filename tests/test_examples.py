"""Every example in examples/ runs, as a user would run it, so that none can rot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_dropin import assert_gone

EXAMPLES = {
    "executor_dropin.py": ["999,999,999,989 is prime: True", "1/0 failed:", "ZeroDivisionError"],
    "asyncio_service.py": ["'I love this' -> positive +2.0", "4 predictions on 2 workers"],
    "crash_and_timeout.py": ["(SIGSEGV)", "CallTimeout", "6 of 6 succeeded", "still serves"],
    "sessions.py": [
        "ada remembers ['likes tea', 'writes programs']",
        "bob remembers ['likes coffee']",
        "open sessions after closing: 0",
        "SessionLost:",
        "a new session starts empty: []",
    ],
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT.parent,  # not the repository: the examples must not depend on the cwd
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    for expected in EXAMPLES[name]:
        assert expected in out, out
    assert_gone(proc.pid, [])
