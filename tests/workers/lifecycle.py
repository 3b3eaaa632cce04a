"""A worker module for lifecycle tests: slow-ish import, set-up failures on demand, memory."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import snakeden

IMPORTED_BY = os.getpid()

_log = os.environ.get("SNAKEDEN_TEST_IMPORT_LOG")
if _log:
    with open(_log, "a") as f:
        f.write(f"{IMPORTED_BY}\n")

# Real CPU work at import, so a warm fork visibly skips it.
_end = time.process_time() + float(os.environ.get("SNAKEDEN_TEST_IMPORT_BURN", "0"))
_digest = b""
while time.process_time() < _end:
    _digest = hashlib.sha256(_digest).digest()

_hog: list[bytes] = []


@snakeden.command
def imported_by() -> int:
    return IMPORTED_BY


@snakeden.command
def getpid() -> int:
    return os.getpid()


@snakeden.command
def echo(x: Any) -> Any:
    return x


@snakeden.command
def hog(mib: int) -> int:
    """Keep ``mib`` MiB of touched memory alive in this worker."""
    _hog.append(os.urandom(mib * 1024 * 1024))
    return len(_hog)


@snakeden.command
def nap(seconds: float) -> float:
    time.sleep(seconds)  # the workload itself (a long call), not a synchronisation
    return seconds


class Fragile:
    """``tests.workers.lifecycle:Fragile``: set-up fails while the file named by
    ``SNAKEDEN_TEST_BREAK`` exists (a worker that cannot start, on demand)."""

    def setup(self) -> None:
        flag = os.environ.get("SNAKEDEN_TEST_BREAK")
        if flag and os.path.exists(flag):
            raise RuntimeError(f"set-up refused: {flag} exists")

    @snakeden.command
    def getpid(self) -> int:
        return os.getpid()
