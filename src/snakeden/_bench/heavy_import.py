"""A module that burns CPU while it is imported: a stand-in for a heavy start-up import.

The cold-start scenario makes every worker import this (and numpy) at start-up. The burn lasts
``SNAKEDEN_BENCH_BURN_S`` seconds of *CPU time* (default 1.0), so on an oversubscribed machine it
really costs that much CPU instead of ending early on a wall clock.
"""

from __future__ import annotations

import os
import time

BURN_S: float = float(os.environ.get("SNAKEDEN_BENCH_BURN_S", "1.0"))


def _burn(seconds: float) -> int:
    deadline = time.process_time() + seconds
    acc = 0
    while time.process_time() < deadline:
        for i in range(2_000):
            acc ^= i * i
    return acc


CHECKSUM: int = _burn(BURN_S)
