"""Who competes: every contender's id, label, kind, requirements and supported scenarios."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from snakeden._bench._common import SCENARIOS, Context, Outcome, Settings

Kind = Literal["floor", "snakeden", "peer"]
Runner = Callable[[str, str, "str | None", Settings, Context], Outcome]

_ALL = frozenset(SCENARIOS) - {"stream", "scale"}  # snakeden (and its floor) only
_FAST = frozenset({"latency", "throughput", "payload"})


@dataclass(frozen=True)
class Contender:
    id: str
    label: str
    kind: Kind
    scenarios: frozenset[str]
    requires: tuple[str, ...] = ()  # importable modules (checked without importing them)
    runner: str = ""  # "module:function", resolved in the measurement process
    why_not: str = ""  # shown for the scenarios it does not take part in
    check: str = ""  # "module:function" returning why it cannot run here (or None)

    def missing(self) -> str | None:
        """A note if a required module (or program) is absent, else None."""
        for name in self.requires:
            if importlib.util.find_spec(name) is None:
                return f"`{name}` is not installed"
        if self.check:
            module, _, func = self.check.partition(":")
            reason: str | None = getattr(importlib.import_module(module), func)()
            return reason
        return None

    def resolve(self) -> Runner:
        module, _, func = self.runner.partition(":")
        fn: Runner = getattr(importlib.import_module(module), func)
        return fn


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        "floor-c",
        "floor: C pipe echo",
        "floor",
        _FAST,
        runner="snakeden._bench._floor:run",
        why_not="a raw pipe has no pool to recover, time out or preload; C cannot import numpy",
    ),
    Contender(
        "floor-py",
        "floor: Python pipe echo",
        "floor",
        _FAST | {"coldstart", "memory", "stream"},
        runner="snakeden._bench._floor:run",
        why_not="a raw pipe has no pool to recover or time out",
    ),
    Contender(
        "floor-node",
        "floor: Node.js pipe echo",
        "floor",
        _FAST,
        runner="snakeden._bench._floor:run",
        why_not="a raw pipe has no pool to recover or time out; Node cannot import numpy",
        check="snakeden._bench._node:node_missing",
    ),
    Contender(
        "snakeden-async",
        "snakeden Pool (asyncio)",
        "snakeden",
        _ALL | {"stream", "scale"},
        runner="snakeden._bench._snakeden:run_async",
    ),
    Contender(
        "snakeden-sync",
        "snakeden SyncPool",
        "snakeden",
        _ALL | {"stream", "scale"},
        runner="snakeden._bench._snakeden:run_sync",
    ),
    Contender(
        "snakeden-uvloop",
        "snakeden Pool (asyncio on uvloop)",
        "snakeden",
        _FAST | {"scale"},
        requires=("uvloop",),
        runner="snakeden._bench._snakeden:run_uvloop",
        why_not="the event loop only changes the call path (snakeden[fast])",
    ),
    Contender(
        "snakeden-node",
        "snakeden Pool (asyncio), Node.js worker",
        "snakeden",
        _FAST,
        runner="snakeden._bench._snakeden:run_node",
        why_not="measured on the call path only (its worker has no numpy, C sleep or kill probe)",
        check="snakeden._bench._node:unavailable",
    ),
    Contender(
        "snakeden-ray",
        "snakeden Pool (asyncio), backend='ray'",
        "snakeden",
        frozenset({"latency", "throughput"}),
        requires=("ray",),
        runner="snakeden._bench._ray:run",
        why_not="the Ray hop is measured on the call path only",
    ),
    Contender(
        "cf-process",
        "concurrent.futures.ProcessPoolExecutor",
        "peer",
        _ALL - {"hang"},
        runner="snakeden._bench._peers:run",
        why_not="no per-call timeout that kills a hung worker",
    ),
    Contender(
        "mp-pool",
        "multiprocessing.Pool",
        "peer",
        _ALL - {"hang"},
        runner="snakeden._bench._peers:run",
        why_not="no per-call timeout that kills a hung worker",
    ),
    Contender(
        "mp-forkserver",
        "multiprocessing.Pool (forkserver + preload)",
        "peer",
        frozenset({"coldstart", "memory"}),
        runner="snakeden._bench._peers:run",
        why_not="same pool as multiprocessing.Pool; only start-up and memory differ",
    ),
    Contender(
        "loky",
        "loky (get_reusable_executor)",
        "peer",
        _ALL - {"hang"},
        requires=("loky",),
        runner="snakeden._bench._peers:run",
        why_not="no per-call timeout that kills a hung worker",
    ),
    Contender(
        "pebble",
        "pebble ProcessPool",
        "peer",
        _ALL,
        requires=("pebble",),
        runner="snakeden._bench._peers:run",
    ),
    Contender(
        "mpire",
        "mpire WorkerPool",
        "peer",
        _ALL - {"hang"},
        requires=("mpire",),
        runner="snakeden._bench._peers:run",
        why_not="its task_timeout interrupts the worker with a signal instead of killing it",
    ),
    Contender(
        "ray",
        "Ray actors",
        "peer",
        _FAST,
        requires=("ray",),
        runner="snakeden._bench._peers:run",
        why_not="only the call path of Ray actors is compared",
    ),
)

BY_ID = {c.id: c for c in CONTENDERS}
