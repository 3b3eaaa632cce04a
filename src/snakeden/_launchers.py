"""Choosing a launcher for a pool's ``start_method``."""

from __future__ import annotations

from snakeden._core import PoolConfig
from snakeden._process import Launcher, SpawnLauncher


def make_launcher(config: PoolConfig) -> Launcher:
    method = config.start_method
    if method == "auto":
        method = "spawn"
    if method == "fork":
        from snakeden._template import ForkLauncher

        return ForkLauncher(config.target, config.preload, python=config.python)
    return SpawnLauncher()
