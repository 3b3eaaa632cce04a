"""Shared fixtures: every test must leave no worker process behind (checked in the process
table, not by asking the pool), and helpers to run asyncio tests without a plugin."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import select
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import psutil
import pytest

from snakeden._core import PoolCore

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Spawned workers import tests.workers.*; make that independent of the cwd.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one asyncio test body with a generous overall bound (never a synchronisation)."""
    return asyncio.run(asyncio.wait_for(coro, 120))


def snakeden_processes() -> list[psutil.Process]:
    """Every live process started by a pool of this test process, wherever it was reparented."""
    me = os.getpid()
    prefix = f"{me}-"
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            env = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if env.get("SNAKEDEN_RUN_TAG", "").startswith(prefix):
            found.append(proc)
    return found


def start_host_script(
    module: str, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Run ``python -m module args`` as a separate host process and return it with the JSON line
    it prints once its pool is up (waited for with a generous bound, never a sleep)."""
    host = subprocess.Popen(
        [sys.executable, "-m", module, *args],
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
        host.wait(60)
        raise AssertionError(f"{module} never reported its processes")
    return host, json.loads(host.stdout.readline())


def survivors(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The pids among ``pids`` still alive (not zombies) after waiting up to ``timeout`` for
    their exits."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    out = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def assert_no_leftovers(timeout: float = 15.0) -> None:
    procs = snakeden_processes()
    if procs:
        # A SIGKILLed grandchild may take a moment to be reaped by init: wait for the exits.
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        details = []
        for p in alive:
            try:
                details.append(f"{p.pid} {' '.join(p.cmdline())}")
            except psutil.Error:
                pass
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        assert not alive, f"processes left behind: {details}"


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    assert_no_leftovers()


@pytest.fixture(autouse=True)
def pool_books_balance(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After every test, every pool it made must balance its books: no leaked lease, in_flight
    equal to what workers really hold, the idle set and worker states in agreement, and a closed
    pool with every worker dead and nothing queued."""
    made: list[PoolCore] = []
    orig = PoolCore.__init__

    def record(self: PoolCore, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(PoolCore, "__init__", record)
    yield
    for core in made:
        if core.checkout.phase.value != "new":
            core.check_invariants()
        if core.checkout.phase.value == "closed":
            assert core.record.watcher is None, "a closed pool's watcher was not stopped"
