"""The launchers' error paths and bookkeeping, without a pool around them."""

from __future__ import annotations

import asyncio
import os

import pytest

from snakeden._errors import WorkerStartError
from snakeden._output import tail_text
from snakeden._process import LaunchSpec, SpawnLauncher, WorkerProcess
from snakeden._template import ForkLauncher

MISSING = "/nonexistent/python"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_missing_interpreter_fails_both_launchers_clearly_and_leaks_no_fd() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        spawn = SpawnLauncher()
        await spawn.start(loop)
        before = open_fds()
        with pytest.raises(WorkerStartError, match=f"cannot start worker w1 .*{MISSING}"):
            await spawn.launch(LaunchSpec("w1", None, python=MISSING))
        assert open_fds() == before
        fork = ForkLauncher(None, python=MISSING)
        with pytest.raises(WorkerStartError, match=f"cannot start the fork template .*{MISSING}"):
            await fork.start(loop)
        assert open_fds() == before

    asyncio.run(body())


def worker_process(pid: int) -> WorkerProcess:
    return WorkerProcess(pid, read_fd=-1, write_fd=-1, stdout_fd=None, stderr_fd=None)


def test_a_fork_reply_and_the_exit_report_meet_in_either_order() -> None:
    launcher = ForkLauncher(None)
    late = worker_process(101)
    launcher._meet(101, late)
    assert not late.exited
    launcher._meet(101, 7)
    assert late.returncode == 7
    # Reaped before the host read the fork reply.
    launcher._meet(102, 3)
    early = worker_process(102)
    launcher._meet(102, early)
    assert early.returncode == 3
    assert not launcher._unmet


def test_tail_text_is_empty_without_lines() -> None:
    assert tail_text([]) == ""
    assert tail_text(["a", "b"]) == "\nlast stderr lines:\n  a\n  b"
