"""A call that runs until the test lets it finish: it says where it runs, then waits at a gate."""

from __future__ import annotations

import os

import snakeden


@snakeden.command
def gate(ready: str, go: str) -> int:
    """Write this worker's pid to the fifo ``ready``; return once someone opened and closed the
    fifo ``go`` (the test does, when it wants the call to end)."""
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    with open(go) as f:
        return len(f.read())


@snakeden.command
def echo(x: object) -> object:
    return x
