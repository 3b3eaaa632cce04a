"""Adapters for the peers: each drives one library through its natural API.

Every library is imported lazily, inside the measurement process, through ``importlib`` (so a
missing peer is a note, not a crash, and the type checker does not depend on which are installed).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import importlib
import itertools
import multiprocessing
import multiprocessing.pool
from importlib import metadata
from typing import Any

from snakeden._bench import peer_tasks
from snakeden._bench._common import Context, NotApplicable, Outcome, Settings
from snakeden._bench._sync import SyncHandle, run_scenario


def _task(command: str) -> Any:
    return getattr(peer_tasks, command)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


class ProcessPoolExecutorHandle(SyncHandle):
    api = {"call": "submit().result()", "submit": "submit()", "map": "map()"}

    def open(self) -> None:
        if self.preload:
            self._ex = cf.ProcessPoolExecutor(
                self.size, initializer=peer_tasks.import_modules, initargs=self.preload
            )
        else:
            self._ex = cf.ProcessPoolExecutor(self.size)

    def close(self) -> None:
        for proc in list((getattr(self._ex, "_processes", None) or {}).values()):
            proc.kill()  # do not wait for calls that sleep for an hour
        self._ex.shutdown(wait=True, cancel_futures=True)

    def call(self, command: str, *args: Any) -> Any:
        return self._ex.submit(_task(command), *args).result()

    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        return self._ex.submit(_task(command), *args)

    def map(self, command: str, items: list[Any], chunksize: int | None) -> list[Any]:
        return list(self._ex.map(_task(command), items, **_chunks(chunksize)))

    def broken_by(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.process.BrokenProcessPool)

    def info(self) -> dict[str, str]:
        return {"start_method": multiprocessing.get_start_method()}


def _chunks(chunksize: int | None) -> dict[str, int]:
    """The ``chunksize`` argument, or none at all: the library's default."""
    return {} if chunksize is None else {"chunksize": chunksize}


class MultiprocessingPoolHandle(SyncHandle):
    api = {
        "call": "apply()",
        "submit": "apply_async()",
        "map": "map()",
        "init": "initializer= imports them",
    }
    start_method: str | None = None  # the platform default

    def open(self) -> None:
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver" and self.preload:
            ctx.set_forkserver_preload(list(self.preload))
        self._pool = ctx.Pool(
            self.size,
            initializer=peer_tasks.import_modules if self.preload else None,
            initargs=self.preload,
        )

    def close(self) -> None:
        self._pool.terminate()  # close() + join() would wait forever for a lost call
        self._pool.join()

    def call(self, command: str, *args: Any) -> Any:
        return self._pool.apply(_task(command), args)

    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        future.set_running_or_notify_cancel()
        self._pool.apply_async(
            _task(command), args, callback=future.set_result, error_callback=future.set_exception
        )
        return future

    def map(self, command: str, items: list[Any], chunksize: int | None) -> list[Any]:
        return self._pool.map(_task(command), items, **_chunks(chunksize))

    def info(self) -> dict[str, str]:
        return {"start_method": self.start_method or multiprocessing.get_start_method()}


class ForkserverPoolHandle(MultiprocessingPoolHandle):
    """``multiprocessing.Pool`` on a forkserver that preloads the heavy modules: the best a
    standard-library user can do for cold start."""

    start_method = "forkserver"
    api = {
        **MultiprocessingPoolHandle.api,
        "init": "set_forkserver_preload() imports them once, the initializer finds them loaded",
    }


class LokyHandle(SyncHandle):
    api = {"call": "submit().result()", "submit": "submit()", "map": "map()"}

    def open(self) -> None:
        self._loky = importlib.import_module("loky")
        self._ex = self._loky.get_reusable_executor(
            max_workers=self.size,
            initializer=peer_tasks.import_modules if self.preload else None,
            initargs=self.preload,
            timeout=3600,
        )

    def close(self) -> None:
        self._ex.shutdown(wait=True, kill_workers=True)

    def recreate(self) -> None:
        # The documented recovery: get_reusable_executor() replaces a broken executor.
        self._broken.clear()
        self.open()

    def call(self, command: str, *args: Any) -> Any:
        return self._ex.submit(_task(command), *args).result()

    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = self._ex.submit(_task(command), *args)
        return future

    def map(self, command: str, items: list[Any], chunksize: int | None) -> list[Any]:
        return list(self._ex.map(_task(command), items, **_chunks(chunksize)))

    def broken_by(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.process.BrokenProcessPool) or "Broken" in type(exc).__name__

    def info(self) -> dict[str, str]:
        return {"start_method": "loky (fork+exec)", "version": _version("loky")}


class PebbleHandle(SyncHandle):
    api = {"call": "schedule().result()", "submit": "schedule()", "map": "map()"}
    supports_timeout = True

    def open(self) -> None:
        pebble = importlib.import_module("pebble")
        self._pool = pebble.ProcessPool(
            max_workers=self.size,
            initializer=peer_tasks.import_modules if self.preload else None,
            initargs=self.preload,
        )

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=30)

    def call(self, command: str, *args: Any) -> Any:
        return self._pool.schedule(_task(command), args=args).result()

    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = self._pool.schedule(_task(command), args=args)
        return future

    def _submit_with_timeout(self, command: str, timeout: float, *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = self._pool.schedule(_task(command), args=args, timeout=timeout)
        return future

    def map(self, command: str, items: list[Any], chunksize: int | None) -> list[Any]:
        return list(self._pool.map(_task(command), items, **_chunks(chunksize)).result())

    def info(self) -> dict[str, str]:
        return {"start_method": multiprocessing.get_start_method(), "version": _version("pebble")}


class MpireHandle(SyncHandle):
    api = {
        "call": "apply()",
        "submit": "apply_async()",
        "map": "map(chunk_size=...)",
        "init": "worker_init= imports them",
    }

    def open(self) -> None:
        self._mpire = importlib.import_module("mpire")
        # keep_alive: reuse the workers across map() calls, as a long-lived pool would.
        self._pool = self._mpire.WorkerPool(n_jobs=self.size, keep_alive=True)
        self._mode = ""
        self._init = (
            functools.partial(peer_tasks.import_modules, *self.preload) if self.preload else None
        )

    def _use(self, mode: str) -> None:
        # Workers kept alive from apply() calls mis-handle map() tasks (and vice versa): switching
        # between the two means a new pool. The scenarios warm up after every switch.
        if self._mode and self._mode != mode:
            self._pool.terminate()
            self._pool = self._mpire.WorkerPool(n_jobs=self.size, keep_alive=True)
        self._mode = mode

    def close(self) -> None:
        self._pool.terminate()

    def call(self, command: str, *args: Any) -> Any:
        self._use("apply")
        return self._pool.apply(_task(command), args, worker_init=self._init)

    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        self._use("apply")
        future: cf.Future[Any] = cf.Future()
        future.set_running_or_notify_cancel()
        self._pool.apply_async(
            _task(command),
            args,
            callback=future.set_result,
            error_callback=future.set_exception,
            worker_init=self._init,
        )
        return future

    def map(self, command: str, items: list[Any], chunksize: int | None) -> list[Any]:
        self._use("map")
        result: list[Any] = self._pool.map(
            _task(command), items, chunk_size=chunksize, worker_init=self._init
        )
        return result

    def broken_by(self, exc: BaseException) -> bool:
        return isinstance(exc, RuntimeError) and "died" in str(exc)

    def info(self) -> dict[str, str]:
        return {"start_method": "fork (mpire default)", "version": _version("mpire")}


class RayHandle(SyncHandle):
    """Ray actors, one per worker, called round-robin."""

    api = {"call": "ray.get(actor.method.remote())", "submit": "actor.method.remote().future()"}

    def open(self) -> None:
        self._ray = importlib.import_module("ray")
        if not self._ray.is_initialized():
            self._ray.init(
                num_cpus=self.size,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        actor_cls = self._ray.remote(peer_tasks.EchoActor)
        self._actors = [actor_cls.remote() for _ in range(self.size)]
        self._ray.get([a.pid.remote() for a in self._actors])
        self._next = itertools.cycle(self._actors)

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)

    def call(self, command: str, *args: Any) -> Any:
        return self._ray.get(getattr(next(self._next), command).remote(*args))

    def _submit(self, command: str, *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = getattr(next(self._next), command).remote(*args).future()
        return future

    def info(self) -> dict[str, str]:
        return {"version": _version("ray")}


HANDLES: dict[str, type[SyncHandle]] = {
    "cf-process": ProcessPoolExecutorHandle,
    "mp-pool": MultiprocessingPoolHandle,
    "mp-forkserver": ForkserverPoolHandle,
    "loky": LokyHandle,
    "pebble": PebbleHandle,
    "mpire": MpireHandle,
    "ray": RayHandle,
}


def run(contender: str, scenario: str, variant: str | None, s: Settings, ctx: Context) -> Outcome:
    handle = HANDLES[contender]
    if contender == "ray" and scenario not in ("latency", "throughput", "payload"):
        raise NotApplicable("Ray is measured on latency, throughput and payload only")
    return run_scenario(handle, scenario, variant, s, ctx)
