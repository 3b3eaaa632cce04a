"""snakeden worker module for the cold-start scenario: :mod:`workers_numpy` (the benchmark
commands, numpy imported) plus :mod:`heavy_import`, which burns ``SNAKEDEN_BENCH_BURN_S`` of CPU.

The imports are in the module itself, so every worker pays for them whatever the start method
(the pool's ``preload`` additionally lets a fork template pay once for all).
"""

from __future__ import annotations

import importlib

from snakeden._bench.workers_numpy import (
    announce_and_sleep,
    echo,
    loaded_hold,
    noop,
    pid,
    pid_hold,
    sleep_c,
)

importlib.import_module("snakeden._bench.heavy_import")

__all__ = ["announce_and_sleep", "echo", "loaded_hold", "noop", "pid", "pid_hold", "sleep_c"]
