"""snakeden's two fronts as contenders: ``snakeden.Pool`` (asyncio) and ``snakeden.SyncPool``.

The asyncio front is measured from inside its own event loop (no thread hop), with the same
scenario logic as :mod:`_sync`; the blocking front goes through the shared :class:`SyncHandle`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import importlib.metadata
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar, Final

import snakeden
from snakeden._bench._common import (
    COLDSTART_PRELOAD,
    MEMORY_PRELOAD,
    SNAKEDEN_MODULES,
    Context,
    NotApplicable,
    Outcome,
    Settings,
    check_loaded,
    pin_caller_and_pool,
    record_memory,
)
from snakeden._bench._sync import SyncHandle, run_scenario
from snakeden._pipeline import MAX_DEPTH

START_METHOD: Final = "auto"  # Final keeps its literal type, which the pool options require


def unavailable() -> str | None:
    """Why snakeden's pools cannot be measured here, or None if they can."""
    missing = [name for name in ("Pool", "SyncPool", "command") if not hasattr(snakeden, name)]
    if missing:
        return f"the snakeden core is not there yet (no snakeden.{', snakeden.'.join(missing)})"
    return None


# -- the blocking front --------------------------------------------------------------------------
class SnakedenSyncHandle(SyncHandle):
    api = {
        "call": "call()",
        "submit": "submit()",
        "map": "map()",
        "init": "the worker module imports them; preload= names them",
    }
    supports_timeout = True
    options: ClassVar[dict[str, Any]] = {}

    def open(self) -> None:
        self._pool = snakeden.SyncPool(
            SNAKEDEN_MODULES[self.preload],
            size=self.size,
            start_method=START_METHOD,
            preload=list(self.preload),
            **self.options,
        )
        self._pool.__enter__()
        self._threads = cf.ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        self._pool.__exit__(None, None, None)
        self._threads.shutdown(wait=False, cancel_futures=True)

    def call(self, command: str, *args: Any) -> Any:
        return self._pool.call(command, *args)

    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        return self._pool.submit(command, *args)

    def map(self, command: str, items: list[Any], chunksize: int | None) -> list[Any]:
        return list(self._pool.map(command, items, chunksize=chunksize))

    def _submit_with_timeout(self, command: str, timeout: float, *args: Any) -> cf.Future[Any]:
        # SyncPool.call() blocks; a helper thread turns it into a future (the hop costs
        # microseconds against a one-second timeout).
        return self._threads.submit(lambda: self._pool.call(command, *args, timeout=timeout))

    @contextlib.contextmanager
    def _session(self) -> Iterator[Callable[..., Any]]:
        with self._pool.session() as session:
            yield session.call

    def session(self) -> contextlib.AbstractContextManager[Callable[..., Any]]:
        return self._session()

    def info(self) -> dict[str, str]:
        tuned = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return {"start_method": START_METHOD, "pool": repr(self._pool), "tuned": tuned}


class SnakedenSyncTuned(SnakedenSyncHandle):
    options: ClassVar[dict[str, Any]] = {"pipeline": MAX_DEPTH}


SnakedenSyncHandle.tuned = SnakedenSyncTuned


def run_sync(
    contender: str, scenario: str, variant: str | None, s: Settings, ctx: Context
) -> Outcome:
    if scenario == "stream":
        from snakeden._bench import _stream

        return _stream.run_sync(s)
    if scenario == "scale":
        return _scale_sync(s)
    return run_scenario(SnakedenSyncHandle, scenario, variant, s, ctx)


def _scale_sync(s: Settings) -> Outcome:
    out = Outcome()
    t0 = time.perf_counter()
    with snakeden.SyncPool(
        SNAKEDEN_MODULES[()], size=s.scale_workers, start_method=START_METHOD
    ) as pool:
        out.add("scale_ready_s", time.perf_counter() - t0)
        _callers_sync(pool, s.scale_callers, s.scale_calls, out, "scale")
    with snakeden.SyncPool(
        SNAKEDEN_MODULES[()], size=s.scale_many_workers, start_method=START_METHOD
    ) as pool:
        _callers_sync(pool, s.scale_many_callers, s.scale_calls, out, "many")
    out.note("callers: threads, each making its share of the calls with call()")
    return out


def _callers_sync(
    pool: snakeden.SyncPool, callers: int, calls: int, out: Outcome, key: str
) -> None:
    per = max(1, calls // callers)
    start = threading.Barrier(callers + 1)

    def caller() -> None:
        pool.call("echo", b"x")  # warm: every thread has had a worker once
        start.wait()
        for _ in range(per):
            pool.call("echo", b"x")

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.add(f"{key}_calls_per_s", per * callers / wall)
    out.add(f"{key}_cpu_s", cpu / (per * callers))


# -- the asyncio front ---------------------------------------------------------------------------
def run_async(
    contender: str, scenario: str, variant: str | None, s: Settings, ctx: Context
) -> Outcome:
    if scenario == "stream":
        from snakeden._bench import _stream

        return asyncio.run(_stream.run_async(s))
    return asyncio.run(_run_async(scenario, variant, s, ctx))


def run_uvloop(
    contender: str, scenario: str, variant: str | None, s: Settings, ctx: Context
) -> Outcome:
    """The asyncio front on uvloop's event loop (``snakeden[fast]``): same scenarios."""
    import uvloop

    if scenario not in ("latency", "throughput", "payload", "scale"):
        raise NotApplicable(f"{scenario} does not depend on the event loop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        out = runner.run(_run_async(scenario, variant, s, ctx))
    out.info["loop"] = f"uvloop {importlib.metadata.version('uvloop')}"
    return out


def run_node(
    contender: str, scenario: str, variant: str | None, s: Settings, ctx: Context
) -> Outcome:
    """The asyncio front with Node.js workers (``command=``): same scenarios, other worker."""
    from snakeden._bench import _node

    reason = _node.unavailable()
    if reason is not None:
        raise NotApplicable(reason)
    if scenario not in ("latency", "throughput", "payload"):
        raise NotApplicable(f"the Node worker has no {scenario} scenario")
    out = asyncio.run(_run_async(scenario, variant, s, ctx, _node.command()))
    out.info["node"] = _node.version()
    return out


def _new_pool(
    size: int,
    preload: tuple[str, ...] = (),
    pipeline: int | None = None,
    *,
    command: list[str] | None = None,
    by_pipe: bool = False,
    ray: bool = False,
) -> snakeden.Pool:
    """A pool with default settings but for what is named (``by_pipe``: shm_threshold=None;
    ``ray``: each worker under a Ray actor, _bench/_ray.py connected Ray first)."""
    options: snakeden.PoolOptions = {"size": size}
    if pipeline is not None:  # else the default, as a user gets it
        options["pipeline"] = pipeline
    if ray:
        options["backend"] = "ray"
        return snakeden.Pool(SNAKEDEN_MODULES[preload], **options)
    if by_pipe:
        options["shm_threshold"] = None
    if command is not None:
        if preload:
            raise NotApplicable("a Node worker has no preload")
        options["command"] = command
        return snakeden.Pool(**options)
    options["start_method"] = START_METHOD
    options["preload"] = list(preload)
    return snakeden.Pool(SNAKEDEN_MODULES[preload], **options)


@contextlib.asynccontextmanager
async def _described(pool: snakeden.Pool, out: Outcome) -> AsyncIterator[None]:
    """Record the pool's description (it names the launcher "auto" chose) once done with it."""
    yield
    out.info["pool"] = repr(pool)


async def _probe_all(
    pool: snakeden.Pool, count: int, hold: float, required: tuple[str, ...] = ()
) -> set[int]:
    seen: set[int] = set()
    while len(seen) < count:
        if required:
            calls = (pool.call("loaded_hold", hold, list(required)) for _ in range(count))
            seen |= check_loaded(await asyncio.gather(*calls), required)
        else:
            seen.update(await asyncio.gather(*(pool.call("pid_hold", hold) for _ in range(count))))
    return seen


async def _probe_capacity(
    pool: snakeden.Pool, size: int, s: Settings, t0: float, exclude: int | None
) -> float | None:
    deadline = t0 + s.recovery_deadline_s
    round_timeout = max(2.0, 50 * s.hold_s)
    while time.perf_counter() < deadline:
        calls = [asyncio.ensure_future(pool.call("pid_hold", s.hold_s)) for _ in range(size)]
        done, pending = await asyncio.wait(calls, timeout=round_timeout)
        for task in pending:
            task.cancel()
        pids = {t.result() for t in done if not t.cancelled() and t.exception() is None}
        if not pending and len(pids) == size and exclude not in pids:
            return time.perf_counter() - t0
    return None


def _describe(task: asyncio.Future[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return f"returned {task.result()!r} (no error!)"
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


async def _run_async(
    scenario: str,
    variant: str | None,
    s: Settings,
    ctx: Context,
    command: list[str] | None = None,
    *,
    ray: bool = False,
) -> Outcome:
    """One scenario on asyncio pools of Python workers, or of ``command`` workers if given, or
    of Python workers on Ray (``ray``)."""
    out = Outcome()
    _pool = functools.partial(_new_pool, command=command, ray=ray)
    if command is None:
        out.info["start_method"] = START_METHOD
    else:
        out.info["command"] = " ".join(command)
    if scenario == "latency":
        async with _pool(s.size) as pool, _described(pool, out):
            await _probe_all(pool, s.size, s.hold_s)  # every worker exists before pinning
            pin_caller_and_pool(out)
            for _ in range(s.warmup_calls):
                await pool.call("echo", b"x")
            for _ in range(s.latency_calls):
                t0 = time.perf_counter()
                await pool.call("echo", b"x")
                out.add("call_s", time.perf_counter() - t0)
            out.note("one call at a time: await call()")
            if command is None:  # the Node runtime has no sessions
                async with pool.session() as session:
                    for _ in range(s.warmup_calls):
                        await session.call("echo", b"x")
                    for _ in range(s.latency_calls):
                        t0 = time.perf_counter()
                        await session.call("echo", b"x")
                        out.add("session_call_s", time.perf_counter() - t0)
                out.note("session row: the same call in pool.session(), same pool")
    elif scenario == "throughput":
        async with _pool(s.size) as pool, _described(pool, out):
            n = s.throughput_calls
            await asyncio.gather(*(pool.call("echo", b"x") for _ in range(s.warmup_calls)))
            t0 = time.perf_counter()
            await asyncio.gather(*(pool.call("echo", b"x") for _ in range(n)))
            out.add("submit_calls_per_s", n / (time.perf_counter() - t0))
            out.note(f"{n} calls in flight: asyncio.gather() of {n} call() coroutines")
            items = [b"x"] * n
            await pool.map("echo", items[: s.warmup_calls], chunksize=s.chunksize)
            t0 = time.perf_counter()
            results = await pool.map("echo", items, chunksize=s.chunksize)
            out.add("map_calls_per_s", n / (time.perf_counter() - t0))
            if len(results) != n:
                raise RuntimeError(f"map returned {len(results)} results for {n} items")
            out.note(f"bulk: await map() with chunksize={s.chunksize}")
            t0 = time.perf_counter()
            results = await pool.map("echo", items)
            out.add("map_default_calls_per_s", n / (time.perf_counter() - t0))
            if len(results) != n:
                raise RuntimeError(f"map returned {len(results)} results for {n} items")
        async with _pool(s.size, pipeline=MAX_DEPTH) as pool:
            await asyncio.gather(*(pool.call("echo", b"x") for _ in range(s.warmup_calls)))
            t0 = time.perf_counter()
            await asyncio.gather(*(pool.call("echo", b"x") for _ in range(n)))
            out.add("pipelined_calls_per_s", n / (time.perf_counter() - t0))
            out.note(f"tuned: Pool(pipeline={MAX_DEPTH}), the most calls in flight per worker")
    elif scenario == "payload":
        async with _pool(s.size) as pool, _described(pool, out):
            await _probe_all(pool, s.size, s.hold_s)
            pin_caller_and_pool(out)
            for size, calls in s.payload:
                data = os.urandom(size)
                if len(await pool.call("echo", data)) != size:
                    raise RuntimeError("the echo came back with a different size")
                for _ in range(calls):
                    t0 = time.perf_counter()
                    await pool.call("echo", data)
                    out.add(f"rtt_s_{size}", time.perf_counter() - t0)
        if command is not None:
            out.note("no pipe-only rows: the Node runtime has no shared-memory path anyway")
            return out
        async with _pool(s.size, by_pipe=True) as pool:
            await _probe_all(pool, s.size, s.hold_s)
            pin_caller_and_pool(out)
            for size, calls in s.payload:
                if size < 1 << 20:
                    continue
                data = os.urandom(size)
                await pool.call("echo", data)
                for _ in range(calls):
                    t0 = time.perf_counter()
                    await pool.call("echo", data)
                    out.add(f"rtt_pipe_s_{size}", time.perf_counter() - t0)
            out.note(
                "default pools send buffers of 64 KiB and more by shared memory; "
                "pipe rows: Pool(shm_threshold=None)"
            )
    elif scenario == "scale":
        t0 = time.perf_counter()
        async with _pool(s.scale_workers) as pool, _described(pool, out):
            out.add("scale_ready_s", time.perf_counter() - t0)
            await _callers(pool, s.scale_callers, s.scale_calls, out, "scale")
        async with _pool(s.scale_many_workers) as pool:
            await _callers(pool, s.scale_many_callers, s.scale_calls, out, "many")
        out.note("callers: tasks, each making its share of the calls with await call()")
    elif scenario == "coldstart":
        assert variant is not None
        count = int(variant)
        t0 = time.perf_counter()
        async with _pool(count, COLDSTART_PRELOAD) as pool, _described(pool, out):
            await _probe_all(pool, count, s.hold_s, COLDSTART_PRELOAD)
            out.add("ready_s", time.perf_counter() - t0)
            out.note("start-up imports: the worker module imports them; preload= names them")
    elif scenario == "memory":
        async with _pool(s.memory_size, MEMORY_PRELOAD) as pool, _described(pool, out):
            pids = await _probe_all(pool, s.memory_size, s.hold_s, MEMORY_PRELOAD)
            record_memory(out, pids)
    elif scenario == "kill":
        async with _pool(s.size) as pool, _described(pool, out):
            await _probe_all(pool, s.size, s.hold_s)
            await _kill(pool, s, ctx, out)
    elif scenario == "hang":
        async with _pool(s.size) as pool, _described(pool, out):
            await _probe_all(pool, s.size, s.hold_s)
            await _hang(pool, s, out)
    else:
        raise NotApplicable(scenario)
    return out


async def _callers(pool: snakeden.Pool, callers: int, calls: int, out: Outcome, key: str) -> None:
    """``callers`` tasks at once, ``calls`` calls in all: calls/s and host CPU per call."""
    per = max(1, calls // callers)

    async def caller() -> None:
        for _ in range(per):
            await pool.call("echo", b"x")

    await asyncio.gather(*(pool.call("echo", b"x") for _ in range(callers)))
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.add(f"{key}_calls_per_s", per * callers / wall)
    out.add(f"{key}_cpu_s", cpu / (per * callers))


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except FileNotFoundError:
        return None


async def _kill(pool: snakeden.Pool, s: Settings, ctx: Context, out: Outcome) -> None:
    path = os.path.join(ctx.tmpdir, "victim.pid")
    victim_call = asyncio.ensure_future(pool.call("announce_and_sleep", path, 3600.0))
    deadline = time.perf_counter() + 30
    while (victim := _read_pid(path)) is None:
        if time.perf_counter() > deadline:
            raise TimeoutError("the victim call never started")
        await asyncio.sleep(0.0005)
    stamps: dict[str, float] = {}
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    victim_call.add_done_callback(lambda _: stamps.setdefault("done", time.perf_counter()))
    capacity = await _probe_capacity(pool, s.size, s, t0, victim)
    await asyncio.wait(
        [victim_call], timeout=max(0.0, t0 + s.kill_error_wait_s - time.perf_counter())
    )
    if victim_call.done():
        out.add("error_s", stamps.get("done", time.perf_counter()) - t0)
        out.note(f"the caller got {_describe(victim_call)}")
    else:
        victim_call.cancel()
        out.note(f"the killed call never failed (waited {s.kill_error_wait_s:g} s): result lost")
    if capacity is None:
        out.note(f"capacity not back within {s.recovery_deadline_s:g} s")
    else:
        out.add("capacity_s", capacity)


async def _hang(pool: snakeden.Pool, s: Settings, out: Outcome) -> None:
    t0 = time.perf_counter()
    hung = asyncio.ensure_future(pool.call("sleep_c", s.hang_sleep_s, timeout=s.hang_timeout_s))
    await asyncio.wait([hung], timeout=s.hang_sleep_s + 30)
    if hung.done():
        out.add("error_s", time.perf_counter() - t0)
        out.note(f"the caller got {_describe(hung)}")
    capacity = await _probe_capacity(pool, s.size, s, t0, None)
    if capacity is None:
        out.note(f"capacity not back within {s.recovery_deadline_s:g} s")
    else:
        out.add("capacity_s", capacity)
