"""The Ray backend (``backend="ray"``): each worker runs under a Ray actor on a cluster node.

The pool does not know: :class:`RayLauncher` returns a :class:`RayWorkerProcess` whose channel,
stdout and stderr are ordinary local pipes, and a relay of two threads per worker moves their
bytes to and from the worker's actor (``_ray_actor.WorkerActor``) on its node::

    pool channel --pipe--> writer thread --actor.write(seq, bytes)--> actor --pipe--> worker
    pool channel <--pipe-- reader thread <--actor.read() long poll--- actor <--pipe-- worker
    pool output  <--pipes- reader thread (stdout, stderr; the exit status, then the end)

Nothing is parsed on the way, so every frame kind and feature of the protocol works through it.
Kill, timeout and shutdown go to the actor, which signals the worker's process group as a local
pool would. The actors run with no Ray-level restarts or retries: snakeden decides what a failure
means. A reader whose long poll fails because the actor is gone marks the worker ``lost`` (its
node died, or the actor was killed from outside) and reports its exit; the call it was running
fails with :class:`~snakeden.WorkerLost`, and the pool starts a replacement wherever Ray finds
room, with its usual back-off.

Ray is imported in :meth:`RayLauncher.start` only: a pool without ``backend="ray"`` never
imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from snakeden._config import PoolConfig, RayOptions
from snakeden._errors import WorkerStartError
from snakeden._process import LaunchSpec, WorkerProcess, make_pipes, python_diagnosis
from snakeden._ray_actor import NODE_PYTHON

log = logging.getLogger("snakeden")

_READ_SIZE = 1 << 20


class RayWorkerProcess(WorkerProcess):
    """A worker on a Ray node. ``pid`` is its pid *there*; signals go through its actor."""

    local = False

    def __init__(
        self, actor: Any, info: dict[str, Any], host_fds: tuple[int, int, int, int]
    ) -> None:
        read_fd, write_fd, stdout_fd, stderr_fd = host_fds
        super().__init__(
            int(info["pid"]),
            read_fd=read_fd,
            write_fd=write_fd,
            stdout_fd=stdout_fd,
            stderr_fd=stderr_fd,
        )
        self.actor = actor
        self.node_id = str(info["node"])
        self.node = self.node_id
        self.ip = str(info["ip"])
        self.actor_pid = int(info["actor_pid"])
        self.watcher_pid: int | None = info.get("watcher_pid")

    def __repr__(self) -> str:
        return f"<RayWorkerProcess pid={self.pid} node={self.node_id[:8]} rc={self.returncode}>"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if not self.exited:
            # The exit comes back through the relay; with Ray gone, the relay reports it lost.
            with contextlib.suppress(Exception):
                self.actor.kill.remote(int(sig))

    def kill_group(self) -> None:
        return None  # the actor did, at the exit


class _Relay:
    """The two threads between one worker's local pipes and its actor."""

    def __init__(self, ray: Any, wp: RayWorkerProcess, relay_fds: tuple[int, ...]) -> None:
        self.ray = ray
        self.wp = wp
        # relay_fds: (from the pool's channel, to the pool's channel, to stdout, to stderr)
        self.from_host = relay_fds[0]
        self.to_host = relay_fds[1:]
        name = f"snakeden-ray-{wp.pid}"
        self.writer = threading.Thread(target=self._write_loop, name=name + "-w", daemon=True)
        self.reader = threading.Thread(target=self._read_loop, name=name + "-r", daemon=True)

    def start(self) -> None:
        self.writer.start()
        self.reader.start()

    def _write_loop(self) -> None:
        seq = 0
        try:
            while True:
                try:
                    data = os.read(self.from_host, _READ_SIZE)
                except OSError:
                    data = b""
                # Not waited for: the actor puts writes back in order by ``seq``, and a dead
                # actor shows in the reader's long poll.
                self.wp.actor.write.remote(seq, data, not data)
                seq += 1
                if not data:
                    return  # the pool closed its end: the worker gets end-of-file, as locally
        except Exception as exc:  # Ray shut down under us: the reader reports the end
            log.debug("snakeden ray relay writer for pid %s ended: %r", self.wp.pid, exc)
        finally:
            os.close(self.from_host)

    def _read_loop(self) -> None:
        returncode: int | None = None
        try:
            while True:
                try:
                    chan, out, err, returncode, done = self.ray.get(self.wp.actor.read.remote())
                except Exception as exc:
                    self.wp.lost = self._why_lost(exc)
                    returncode = None
                    return
                for fd, data in zip(self.to_host, (chan, out, err), strict=True):
                    if data:
                        _write_all(fd, data)
                if done:
                    return
        finally:
            for fd in self.to_host:
                os.close(fd)
            with contextlib.suppress(Exception):
                self.ray.kill(self.wp.actor)
            self.wp.set_exited(returncode)

    def _why_lost(self, exc: Exception) -> str:
        text = str(exc)
        where = f"its Ray node {self.wp.node_id} ({self.wp.ip})"
        if "node has died" in text or not _node_alive(self.ray, self.wp.node_id):
            return f"{where} is gone (the cluster declared it dead)"
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return f"the Ray actor that owned it (pid {self.wp.actor_pid} on {where}) died: {first}"


def _node_alive(ray: Any, node: str) -> bool:
    try:
        return any(n.get("NodeID") == node and n.get("Alive") for n in ray.nodes())
    except Exception:
        return False  # the cluster itself is unreachable: as good as gone


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # the pool closed its end: nobody reads this any more


class RayLauncher:
    """Starts each worker under a fresh ``WorkerActor`` on the cluster (see the module doc)."""

    name = "ray"

    def __init__(self, config: PoolConfig, env: dict[str, str]) -> None:
        self.config = config
        self.options = config.ray or RayOptions()
        self.runs_python = config.command is None
        self._ray: Any = None
        self._actor_cls: Any = None
        self._owns_ray = False
        self._actors: dict[str, Any] = {}  # worker id -> its actor, until the actor is killed
        self._lock = threading.Lock()

    def diagnose(self, stderr_lines: Sequence[str]) -> str | None:
        if not self.runs_python:
            return None
        return python_diagnosis(self.config.python or "the Ray nodes' python", stderr_lines)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            import ray
        except ImportError as exc:
            raise WorkerStartError(
                f"backend='ray' needs Ray, which cannot be imported here ({exc}): "
                f"pip install 'snakeden[ray]'"
            ) from exc
        from snakeden._ray_actor import WorkerActor

        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.options.address,
                    namespace=self.options.namespace,
                    log_to_driver=False,  # the workers' output reaches the pool's logging
                )
            except Exception as exc:
                raise WorkerStartError(
                    f"cannot connect to the Ray cluster at {self.options.address or 'RAY_ADDRESS'}"
                    f": {exc}. Start one with `ray start --head`, or check ray=RayOptions("
                    f"address=...)"
                ) from exc
            self._owns_ray = True
        self._actor_cls = ray.remote(WorkerActor)

    def _actor_options(self) -> dict[str, Any]:
        o = self.options
        opts: dict[str, Any] = {
            "num_cpus": o.num_cpus,
            "num_gpus": o.num_gpus,
            "resources": dict(o.resources),
            "max_restarts": 0,
            "max_task_retries": 0,
            # A threaded actor: the relay's long poll, its writes and a kill at once.
            "max_concurrency": 8,
        }
        if o.memory is not None:
            opts["memory"] = o.memory
        if o.runtime_env is not None:
            opts["runtime_env"] = dict(o.runtime_env)
        if o.placement == "spread":
            opts["scheduling_strategy"] = "SPREAD"
        elif not isinstance(o.placement, str):
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=o.placement, placement_group_bundle_index=o.placement_bundle
            )
        return opts

    def _argv(self, spec: LaunchSpec) -> list[str]:
        if self.config.command is not None:
            return [*self.config.command, spec.target] if spec.target else [*self.config.command]
        argv = [self.config.python or NODE_PYTHON, "-m", "snakeden.worker"]
        if spec.target:
            argv.append(spec.target)
        return [*argv, f"--snakeden-run={spec.run_tag}"]

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        assert self._actor_cls is not None, "launcher not started"
        # A run tag of its own per worker: the actor's run watcher must kill this worker's
        # run only, and a begun slot the host made is no use on another machine.
        spec = replace(spec, run_tag=f"{spec.run_tag}-{spec.worker_id}")
        if self.config.command is not None:
            spec = replace(spec, target=None)  # the program's argument, not a module to find
        argv = self._argv(spec)
        actor = self._actor_cls.options(**self._actor_options()).remote()
        with self._lock:
            self._actors[spec.worker_id] = actor
        try:
            ref = actor.start.remote(argv, spec, spec.cwd)
            info = await asyncio.wait_for(
                asyncio.wrap_future(ref.future()), self.config.start_timeout
            )
        except BaseException as exc:
            self._kill_actor(spec.worker_id)
            if isinstance(exc, TimeoutError):
                why = {spec.worker_id: "not placed"}
                raise WorkerStartError(self._unplaced(spec), why) from None
            if isinstance(exc, Exception):
                raise WorkerStartError(
                    f"cannot start worker {spec.worker_id} under a Ray actor: {exc}",
                    {spec.worker_id: str(exc)},
                ) from exc
            raise
        if isinstance(info, str):
            self._kill_actor(spec.worker_id)
            raise WorkerStartError(
                f"cannot start worker {spec.worker_id} on its Ray node: {info}. Check that "
                f"the program exists there (python=/command=, cwd=)",
                {spec.worker_id: info},
            )
        host_r, to_host, from_host, host_w = make_pipes()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        wp = RayWorkerProcess(actor, info, (host_r, host_w, out_r, err_r))
        wp.on_exit(lambda _wp: self._forget(spec.worker_id))
        _Relay(self._ray, wp, (from_host, to_host, out_w, err_w)).start()
        return wp

    def _unplaced(self, spec: LaunchSpec) -> str:
        try:
            free = self._ray.available_resources()
        except Exception as exc:
            free = f"unknown ({exc})"
        o = self.options
        need = {"CPU": o.num_cpus, "GPU": o.num_gpus, **o.resources}
        return (
            f"no Ray node took worker {spec.worker_id} within {self.config.start_timeout}s "
            f"(start_timeout): it needs {need} (memory={o.memory}), placement "
            f"{o.placement!r}; free in the cluster now: {free}. Add nodes, or ask for less "
            f"per worker (ray=RayOptions(num_cpus=...))"
        )

    def _forget(self, worker_id: str) -> None:
        with self._lock:
            self._actors.pop(worker_id, None)

    def _kill_actor(self, worker_id: str) -> None:
        with self._lock:
            actor = self._actors.pop(worker_id, None)
        if actor is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)

    async def close(self) -> None:
        for worker_id in list(self._actors):
            self._kill_actor(worker_id)
        if self._owns_ray and self._ray is not None:
            self._ray.shutdown()
            self._owns_ray = False

    def pids(self) -> Sequence[int]:
        return ()  # its helpers (the actors) live on the nodes and die with the workers
