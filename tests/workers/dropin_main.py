"""Run as ``python -m tests.workers.dropin_main``: a function of the __main__ module, called by
reference; the worker imports this module by its name and the guarded part does not run."""

from __future__ import annotations

import snakeden


def triple(x: int) -> int:
    return 3 * x


if __name__ == "__main__":
    with snakeden.SyncPool(size=1) as pool:
        print(pool.submit(triple, 14).result(60))
