"""Types and helpers shared by the harness (parent) and the measurement processes (children)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import psutil

#: Every scenario, in the order they run and are reported.
SCENARIOS: Final = (
    "latency",
    "throughput",
    "payload",
    "coldstart",
    "kill",
    "hang",
    "memory",
    "stream",
    "scale",
)

#: The worker module snakeden pools load, and what the cold-start workers import at start-up.
WORKER_MODULE: Final = "snakeden._bench.workers"
HEAVY_MODULE: Final = "snakeden._bench.heavy_import"
COLDSTART_PRELOAD: Final = ("numpy", HEAVY_MODULE)
MEMORY_PRELOAD: Final = ("numpy",)
#: The snakeden worker module for each set of start-up imports (the module imports them itself).
SNAKEDEN_MODULES: Final[dict[tuple[str, ...], str]] = {
    (): WORKER_MODULE,
    MEMORY_PRELOAD: "snakeden._bench.workers_numpy",
    COLDSTART_PRELOAD: "snakeden._bench.workers_heavy",
}

#: The environment variable that sets how long ``heavy_import`` burns CPU.
BURN_ENV: Final = "SNAKEDEN_BENCH_BURN_S"

KIB: Final = 1024
MIB: Final = 1024 * 1024

Mode = Literal["full", "short", "tiny"]


class NotApplicable(Exception):
    """This contender cannot run this scenario (or this part of it)."""


@dataclass(frozen=True)
class Settings:
    """Every knob of a run. Serialised into the JSON and into each measurement's spec."""

    mode: Mode
    reps: dict[str, int]
    size: int = 2  # pool size for latency, throughput, payload, kill and hang
    warmup_calls: int = 200
    latency_calls: int = 2_000
    throughput_calls: int = 20_000
    chunksize: int = 64
    payload: tuple[tuple[int, int], ...] = ((KIB, 2_000), (MIB, 100), (16 * MIB, 12))
    coldstart_sizes: tuple[int, ...] = (1, 4, 16)
    burn_s: float = 1.0
    hold_s: float = 0.01  # how long each capacity-probe call sleeps
    kill_error_wait_s: float = 5.0  # how long to wait for the killed call's error
    recovery_deadline_s: float = 30.0  # give up on "capacity is back" after this long
    hang_timeout_s: float = 1.0
    hang_sleep_s: int = 10
    memory_size: int = 4
    # scale: a pool of scale_workers with scale_callers calls at once, then scale_many_callers
    # at once on scale_many_workers; scale_calls calls each
    scale_workers: int = 100
    scale_callers: int = 100
    scale_many_workers: int = 16
    scale_many_callers: int = 1000
    scale_calls: int = 20_000
    measure_timeout_s: float = 300.0  # hard limit on one measurement process
    stream_items: int = 100_000  # items per stream (the stream scenario)

    @classmethod
    def for_mode(cls, mode: Mode) -> Settings:
        if mode == "full":
            reps = {
                "latency": 5,
                "throughput": 3,
                "payload": 3,
                "coldstart": 3,
                "kill": 3,
                "hang": 3,
                "memory": 2,
                "stream": 3,
                "scale": 2,
            }
            return cls(mode=mode, reps=reps)
        if mode == "short":
            reps = dict.fromkeys(SCENARIOS, 1)
            reps.update(latency=3, throughput=2, payload=2)
            return cls(
                mode=mode,
                reps=reps,
                warmup_calls=50,
                latency_calls=500,
                throughput_calls=5_000,
                payload=((KIB, 300), (MIB, 30), (16 * MIB, 4)),
                burn_s=0.1,
                kill_error_wait_s=2.0,
                recovery_deadline_s=15.0,
                hang_sleep_s=5,
                memory_size=2,
                scale_calls=5_000,
                measure_timeout_s=120.0,
                stream_items=20_000,
            )
        return cls(
            mode=mode,
            reps=dict.fromkeys(SCENARIOS, 1),
            warmup_calls=5,
            latency_calls=20,
            throughput_calls=200,
            chunksize=16,
            payload=((KIB, 5), (64 * KIB, 3)),
            coldstart_sizes=(1, 2),
            burn_s=0.01,
            kill_error_wait_s=1.0,
            recovery_deadline_s=10.0,
            hang_sleep_s=3,
            memory_size=1,
            scale_workers=3,
            scale_callers=6,
            scale_many_workers=2,
            scale_many_callers=20,
            scale_calls=200,
            measure_timeout_s=60.0,
            stream_items=1_000,
        )

    def with_reps(self, reps: int) -> Settings:
        return dataclasses.replace(self, reps=dict.fromkeys(SCENARIOS, reps))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Settings:
        values = dict(data)
        values["payload"] = tuple((int(s), int(n)) for s, n in values["payload"])
        values["coldstart_sizes"] = tuple(int(n) for n in values["coldstart_sizes"])
        return cls(**values)


@dataclass
class Outcome:
    """What one measurement (one contender, scenario, variant and repetition) produced."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)

    def add(self, series: str, value: float) -> None:
        self.samples.setdefault(series, []).append(value)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass(frozen=True)
class Context:
    """Where a measurement process finds what the harness prepared for it."""

    c_echo: str | None  # the compiled C floor, if any
    tmpdir: str  # a private scratch directory


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank; exact enough for per-call samples."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def check_loaded(answers: Iterable[Any], required: tuple[str, ...]) -> set[int]:
    """The pids in ``loaded_hold`` answers; ``RuntimeError`` if a worker lacks a module."""
    pids: set[int] = set()
    for pid, missing in answers:
        if missing:
            raise RuntimeError(
                f"worker {pid} lacks the start-up imports {missing} (of {list(required)}): "
                "its figure would not be comparable"
            )
        pids.add(int(pid))
    return pids


def wait_for_file(path: str, timeout: float) -> str:
    """Poll until ``path`` exists and return its content; ``TimeoutError`` after ``timeout``."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout} s") from None
            time.sleep(0.0005)


def pin_caller_and_pool(outcome: Outcome) -> None:
    """Pin the calling thread to one CPU and every descendant process to another.

    One-call-at-a-time round trips are otherwise at the mercy of where the scheduler places the
    two ends: on the same CPU a pipe round trip costs a few microseconds, across CPUs (with a
    cross-CPU wake-up) several times that, and which one a fresh process gets is a coin toss.
    Pinned, every contender pays the same cross-CPU wake-up: the realistic case for a pool.
    The caller's other threads (a pool's helper threads) stay unpinned, free to run anywhere.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        outcome.note("not pinned: only one CPU is usable")
        return
    caller_cpu, pool_cpu = cpus[0], cpus[1]
    for child in psutil.Process(os.getpid()).children(recursive=True):
        _pin_threads(child.pid, pool_cpu)
    os.sched_setaffinity(0, {caller_cpu})  # this thread only
    outcome.note(f"calling thread pinned to CPU {caller_cpu}, pool processes to CPU {pool_cpu}")


def _pin_threads(pid: int, cpu: int) -> None:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread or process that just ended
            os.sched_setaffinity(int(tid), {cpu})


def memory_of(pids: Iterable[int]) -> tuple[list[float], list[float]]:
    """USS and PSS, in MiB, of each pid."""
    uss: list[float] = []
    pss: list[float] = []
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        uss.append(info.uss / MIB)
        pss.append(getattr(info, "pss", float("nan")) / MIB)
    return uss, pss


def support_processes(exclude: Iterable[int]) -> list[int]:
    """Live descendants of this process that are not in ``exclude`` (forkservers, trackers...)."""
    skip = set(exclude)
    out: list[int] = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.pid not in skip and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def record_memory(outcome: Outcome, worker_pids: Iterable[int]) -> None:
    """Fill the memory scenario's series for a pool whose workers are ``worker_pids``."""
    pids = sorted(set(worker_pids))
    uss, pss = memory_of(pids)
    for u, p in zip(uss, pss, strict=True):
        outcome.add("uss_mib", u)
        outcome.add("pss_mib", p)
    support_uss = 0.0
    names: list[str] = []
    for pid in support_processes(pids):
        try:
            proc = psutil.Process(pid)
            support_uss += proc.memory_full_info().uss / MIB
            names.append(" ".join(proc.cmdline()[:3])[:60] or proc.name())
        except psutil.Error:
            continue
    outcome.add("support_uss_mib", support_uss)
    outcome.info["workers"] = str(len(pids))
    outcome.info["support_processes"] = "; ".join(names) or "none"
