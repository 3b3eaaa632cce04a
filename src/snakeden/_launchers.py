"""Which launcher starts a pool's workers: the fork template, spawn, any program, or Ray."""

from __future__ import annotations

import os
import sys

from snakeden._config import PoolConfig
from snakeden._process import CommandLauncher, Launcher, SpawnLauncher


def make_launcher(config: PoolConfig, run_tag: str, env: dict[str, str]) -> Launcher:
    """The launcher for ``start_method``: ``auto`` forks from a template where it can; a
    ``command`` (any program speaking the protocol) is always spawned from its argv; the Ray
    backend starts each worker under a Ray actor on a cluster node (``_ray_launcher``)."""
    if config.backend == "ray":
        from snakeden._ray_launcher import RayLauncher  # imports Ray itself only in start()

        return RayLauncher(config, env)
    if config.command is not None:
        return CommandLauncher(config.command)
    method = config.start_method
    if method == "auto":
        same_python = config.python is None or os.path.realpath(config.python) == os.path.realpath(
            sys.executable
        )
        method = (
            "fork" if hasattr(os, "fork") and sys.platform == "linux" and same_python else "spawn"
        )
    if method == "fork":
        from snakeden._template import ForkLauncher

        return ForkLauncher(
            config.target,
            config.preload,
            python=config.python,
            env=env,
            cwd=config.cwd,
            run_tag=run_tag,
            start_timeout=config.start_timeout,
        )
    return SpawnLauncher()
