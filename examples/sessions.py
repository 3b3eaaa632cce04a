"""Sessions: state that several calls share, kept in the one worker that serves them.

Run: python examples/sessions.py

Each "conversation" remembers what it was told. Its state lives in one worker process, reached
by the command as ``snakeden.context().session`` (a dict), and is dropped when the session
closes. Two conversations never see each other's state, even on the same worker; and a session
whose worker dies fails with ``SessionLost`` instead of carrying on with empty state elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import pathlib

import snakeden

# Workers import this file as a module by its name: they run in its folder.
HERE = pathlib.Path(__file__).resolve()


@snakeden.command
def tell(fact: str) -> int:
    """Remember ``fact`` in this conversation; return how many it holds."""
    memory = snakeden.context().session
    assert memory is not None, "tell() is meant to be called in a session"
    memory.setdefault("facts", []).append(fact)
    return len(memory["facts"])


@snakeden.command
def recall() -> list[str]:
    memory = snakeden.context().session
    assert memory is not None, "recall() is meant to be called in a session"
    return list(memory.get("facts", []))


@snakeden.command
def crash() -> None:
    os._exit(1)  # stands for a segfault in a native library


async def conversation(pool: snakeden.Pool, name: str, facts: list[str]) -> str:
    async with pool.session() as s:  # affinity="wait": queue for its worker when busy
        for fact in facts:
            await s.call("tell", fact)
        return f"{name} remembers {await s.call('recall')} (session {s.id} on {s.worker_id})"


async def main() -> None:
    async with snakeden.Pool(HERE.stem, size=2, cwd=str(HERE.parent)) as pool:
        lines = await asyncio.gather(
            conversation(pool, "ada", ["likes tea", "writes programs"]),
            conversation(pool, "bob", ["likes coffee"]),
        )
        print("\n".join(lines))
        print(f"open sessions after closing: {pool.stats().sessions}")

        async with pool.session() as s:
            await s.call("tell", "about to lose this")
            try:
                await s.call("crash")
            except snakeden.WorkerCrashed:
                print("the session's worker crashed")
            try:
                await s.call("recall")
            except snakeden.SessionLost as exc:
                print(f"SessionLost: {exc}")
        async with pool.session() as s:  # the pool has replaced the worker
            print(f"a new session starts empty: {await s.call('recall')}")


if __name__ == "__main__":
    asyncio.run(main())
