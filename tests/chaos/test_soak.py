"""Smoke test of the soak mode: one quiet round of one small storm, its figures printed."""

from __future__ import annotations

import pytest

from snakeden._bench import main


def test_soak_runs_a_round_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--soak", "--minutes", "0", "--quick", "--hogs", "0", "--only", "garbage/sync"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "garbage[sync]" in out
    assert "| garbage/sync | quiet | 1 |" in out
    assert "0 violations" in out


def test_soak_rejects_an_unknown_storm() -> None:
    assert main(["--soak", "--only", "nonesuch"]) == 2
