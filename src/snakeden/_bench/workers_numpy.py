"""snakeden worker module for the memory scenario: the benchmark commands, with numpy imported.

The import is in the module itself, so every worker has numpy loaded whatever the start method
(the pool's ``preload=["numpy"]`` additionally lets a fork template import it once for all).
"""

from __future__ import annotations

import importlib

from snakeden._bench.workers import (
    announce_and_sleep,
    echo,
    loaded_hold,
    noop,
    pid,
    pid_hold,
    sleep_c,
)

importlib.import_module("numpy")

__all__ = ["announce_and_sleep", "echo", "loaded_hold", "noop", "pid", "pid_hold", "sleep_c"]
