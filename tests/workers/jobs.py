"""A worker for ``snakeden map`` tests: fails on some lines, kills itself on one."""

from __future__ import annotations

import os
import time
from typing import Any

import snakeden

CRASH_ON = 4321


@snakeden.command
def job(x: Any) -> Any:
    if isinstance(x, dict):  # {"rendezvous": fifo, "sleep": seconds}: a call still running
        with open(x["rendezvous"], "w") as f:
            f.write("started\n")
        time.sleep(x["sleep"])  # the workload itself (a long line), not a synchronisation
        return "slept"
    if x == CRASH_ON:
        os._exit(3)
    if x % 1000 == 7:
        raise ValueError(f"bad line {x}")
    if x % 1000 == 8:
        return b"bytes are not JSON"
    return x * 2
