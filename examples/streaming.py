"""A generator command streams its items to the caller as they are produced.

Run: python examples/streaming.py

The worker yields words one by one (think: tokens of a language model). The caller gets each as
soon as it is made, and the worker never runs more than ``stream_window`` items ahead of a slow
reader. Stopping early (``break``) stops the generator in the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import snakeden


def tokens(text: str, repeat: int = 1) -> Iterator[str]:
    for _ in range(repeat):
        yield from text.split()


async def main() -> None:
    async with snakeden.Pool(size=1, stream_window=4) as pool:
        got = [word async for word in pool.stream(tokens, "the quick brown fox jumps")]
        print(f"streamed {len(got)} tokens: {' '.join(got)}")
        async with pool.stream(tokens, "never ending story", repeat=10**9) as words:
            n = 0
            async for _ in words:
                n += 1
                if n == 3:
                    break
        print(
            f"stopped after {n} of a billion; the worker still serves: {await pool.call(len, 'ok')}"
        )
    with snakeden.SyncPool(size=1) as sync_pool:
        print("thread front:", list(sync_pool.stream(tokens, "one two three")))


if __name__ == "__main__":
    asyncio.run(main())
