"""A named pipe a worker writes to when it reaches a point: the test waits on that write itself
(``poll()`` with a generous bound), never on a sleep or a polled condition."""

from __future__ import annotations

import asyncio
import os
import pathlib
import select


class Rendezvous:
    def __init__(self, directory: str | os.PathLike[str], name: str = "rendezvous") -> None:
        self.path = pathlib.Path(directory, name)
        os.mkfifo(self.path)
        # Non-blocking open for reading succeeds without a writer, and poll() then waits for the
        # first writer's data (Linux reports no hang-up before a writer has ever opened it).
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    def __str__(self) -> str:
        return str(self.path)

    def wait(self, timeout: float = 60.0) -> str:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise AssertionError(f"nobody reached {self.path} within {timeout}s")
        chunks = []
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode()

    async def wait_async(self, timeout: float = 60.0) -> str:
        return await asyncio.to_thread(self.wait, timeout)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Rendezvous:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def held_calls(directory: str, n: int) -> tuple[list[Rendezvous], list[str]]:
    """For ``n`` calls of ``block_until``: the rendezvous each reports its start on, and the
    FIFO each then waits on until the test (or another call) writes to it."""
    flags = [Rendezvous(directory, f"began{i}") for i in range(n)]
    releases = [os.path.join(directory, f"release{i}") for i in range(n)]
    for r in releases:
        os.mkfifo(r)
    return flags, releases
