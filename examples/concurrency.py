"""One worker serving several calls at once: ``snakeden.concurrency(n)`` in the worker module.

Run: python examples/concurrency.py

For I/O-bound commands (``async def`` ones run side by side on the worker's event loop; sync
ones on n threads), one warm worker can serve many callers. Here eight calls meet inside one
worker at the same time: each waits at a barrier that only opens with all eight inside.
"""

from __future__ import annotations

import asyncio
import os
import pathlib

import snakeden

HERE = pathlib.Path(__file__).resolve()  # workers import this file by its name, from its folder

snakeden.concurrency(8)  # read by the worker when it imports this module
_barrier: asyncio.Barrier | None = None


@snakeden.command
async def fetch(url: str) -> str:
    global _barrier
    _barrier = _barrier or asyncio.Barrier(8)
    async with asyncio.timeout(60):
        await _barrier.wait()  # stands for awaiting a response; opens with all eight inside
    return f"{url} fetched by worker {os.getpid()}"


async def main() -> None:
    async with snakeden.Pool(HERE.stem, size=1, cwd=str(HERE.parent)) as pool:
        urls = [f"https://example.org/{i}" for i in range(8)]
        pages = await asyncio.gather(*(pool.call("fetch", u) for u in urls))
        workers = {p.rsplit(" ", 1)[1] for p in pages}
        print(f"{len(pages)} calls, all in flight at once on {len(workers)} worker")
        print(f"slots: {pool.stats().slots}")


if __name__ == "__main__":
    asyncio.run(main())
