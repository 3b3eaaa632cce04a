"""Cancelling a caller reaches the command in the worker.

Run: python examples/cancellation.py

An ``async def`` command gets ``CancelledError`` at its next await; a sync command checks
``snakeden.context().cancelled`` between steps. Either way the worker stops early and serves the
next call; one that ignores cancellation would be killed after ``cancel_grace``.
"""

from __future__ import annotations

import asyncio
import hashlib

import snakeden


async def wait_for_data() -> str:
    ctx = snakeden.context()
    try:
        await ctx.acall_host("note", "waiting for data")
        await asyncio.Event().wait()  # stands for a slow network read
    except asyncio.CancelledError:
        await ctx.acall_host("note", "async command: cancelled at its await")
        raise
    return "data"


def crunch(steps: int) -> int:
    ctx = snakeden.context()
    digest = b""
    for step in range(steps):
        if ctx.cancelled:
            ctx.call_host("note", f"sync command: saw the flag at step {step}, stopping")
            return step
        if step == 10:
            ctx.call_host("note", "crunching")
        digest = hashlib.sha256(digest).digest()
    return steps


async def main() -> None:
    started = asyncio.Queue[str]()

    async def note(text: str) -> None:  # async: it runs on this loop (a sync one, on a thread)
        print(f"worker says: {text}")
        started.put_nowait(text)

    async with snakeden.Pool(size=1, host_functions={"note": note}) as pool:
        for call in (pool.call(wait_for_data), pool.call(crunch, 10**12)):
            task = asyncio.ensure_future(call)
            await started.get()  # the command is running in the worker
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                print("caller: cancelled")
            await started.get()  # the worker's last word on it comes after our cancel
        print("the same worker serves on:", await pool.call(sum, [1, 2, 3]))


if __name__ == "__main__":
    asyncio.run(main())
