"""Invariants of a pool, checked from its public API (and the core's own ``check_invariants()``
once it has one): counts that cannot be negative or inconsistent, no lease or waiter left when
nothing runs, every listed worker alive, full strength."""

from __future__ import annotations

import snakeden
from snakeden._bench._chaos_load import pool_violations


def check_pool(
    pool: snakeden.Pool | snakeden.SyncPool, *, quiescent: bool = False, size: int | None = None
) -> None:
    """Assert the pool is consistent. ``quiescent``: no call runs or waits now (nothing may be
    leased, queued or busy); ``size``: it should be at full strength with that many workers.
    Calls ``pool._core.check_invariants()`` too where the core has it."""
    problems = pool_violations(pool, quiescent=quiescent, size=size)
    assert not problems, "\n".join(problems)
