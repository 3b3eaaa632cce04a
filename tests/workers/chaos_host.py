"""A host for the chaos host-kill test: an asyncio pool of 4 workers, each having started a
grandchild, with a call running on every worker and more queued; reports its processes as JSON,
then waits to be killed. Usage: python -m tests.workers.chaos_host"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import snakeden
from snakeden._bench._chaos_procs import WORKER


async def main() -> None:
    pool = await snakeden.Pool(WORKER, size=4).start()
    # Four calls at once on four idle workers: each takes its own worker, starts a grandchild.
    started = await asyncio.gather(*(pool.call("grandchild") for _ in range(4)))
    assert len({pid for pid, _ in started}) == 4
    # Calls in flight on every worker (an hour long), and more queued behind them.
    busy = [asyncio.ensure_future(pool.call("work", i, 3_600_000.0)) for i in range(12)]
    await asyncio.sleep(0)  # a yield: each call takes its worker or its place in line
    s = pool.stats()  # some may wait in a busy worker's pipe (pipelining) rather than in line
    assert s.in_flight >= 4 and s.in_flight + s.queued == 12
    core = pool._core
    assert core is not None
    info = {
        "host": os.getpid(),
        "workers": pool.worker_pids(),
        "helpers": list(core.launcher.pids()),
        "grandchildren": [child for _, child in started],
    }
    print(json.dumps(info), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until killed
    del busy


if __name__ == "__main__":
    asyncio.run(main())
