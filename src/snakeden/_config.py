"""Every knob of a pool, in one frozen record, and how the fronts' keyword options become it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snakeden import _shm
from snakeden._events import WorkerEvent
from snakeden._protocol import DEFAULT_MAX_FRAME_SIZE


@dataclass(frozen=True)
class PoolConfig:
    """Every knob of a pool. See ``Pool`` for what each means."""

    target: str | None = None
    size: int = 0  # 0 -> os.cpu_count()
    max_size: int | None = None
    start_method: str = "auto"
    preload: tuple[str, ...] = ()
    python: str | None = None
    serializer: str = "msgpack"
    max_queue: int = 100_000
    queue_timeout: float | None = None
    call_timeout: float | None = None
    start_timeout: float = 60.0
    shutdown_timeout: float = 5.0
    cancel_grace: float = 5.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    max_calls: int | None = None
    max_age: float | None = None
    max_memory: int | None = None
    memory_check_interval: float = 2.0
    health_interval: float | None = 10.0
    ping_timeout: float = 5.0
    idle_timeout: float | None = None
    min_ready: int | None = None
    pipeline: int = 1
    shm_threshold: int | None = None
    restart_backoff: float = 0.05
    restart_backoff_max: float = 5.0
    max_start_failures: int = 5
    on_event: Callable[[WorkerEvent], None] | None = None
    clock: Callable[[], float] = time.monotonic

    @property
    def min_size(self) -> int:
        return self.size or (os.cpu_count() or 1)

    @property
    def upper_size(self) -> int:
        return max(self.min_size, self.max_size or self.min_size)

    def validate(self) -> None:
        if self.size < 0 or (self.max_size is not None and self.max_size < 1):
            raise ValueError("size and max_size must be positive")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is below size ({self.min_size})")
        if self.serializer not in ("msgpack", "pickle"):
            raise ValueError(f"serializer must be 'msgpack' or 'pickle', not {self.serializer!r}")
        if self.start_method not in ("auto", "fork", "spawn"):
            raise ValueError(f"start_method must be auto, fork or spawn: {self.start_method!r}")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.pipeline < 1:
            raise ValueError("pipeline must be >= 1")
        if self.shm_threshold is not None:
            if self.serializer != "msgpack":
                raise ValueError("shm_threshold works with the msgpack serializer only")
            if not _shm.available():
                raise ValueError("shm_threshold needs a writable /dev/shm")
        if self.min_ready is not None and not 1 <= self.min_ready <= self.min_size:
            raise ValueError(f"min_ready must be between 1 and size ({self.min_size})")


def make_config(target: str | None, kwargs: dict[str, Any]) -> PoolConfig:
    if "preload" in kwargs:
        kwargs["preload"] = tuple(kwargs["preload"])
    if "env" in kwargs and kwargs["env"] is None:
        kwargs["env"] = {}
    return PoolConfig(target=target, **kwargs)
