"""The fork template: one warm process per pool, from which workers are forked in milliseconds.

Host side (:class:`ForkLauncher`) here; the template's own side in ``_template_proc``::

    host (ForkLauncher)                           template (python -m snakeden._template_proc)
    -------------------                           --------------------------------------------
    spawn template with a SEQPACKET socket  --->  import target + preload modules, once
                                            <---  {"op": "ready", "threads": n}
    {"op": "fork", worker_id} + 4 fds       --->  fork(): child dup2s stdout/stderr, serves
                                            <---  {"op": "forked", pid}
                                            <---  {"op": "exited", pid, returncode} (SIGCHLD)

The template stays single-threaded and never runs per-worker set-up: forking a process with
threads copies only the forking thread, so locks held by the others stay locked forever in the
child. Python threads in the template are refused with a clear error. Native threads are
identified with ``threadpoolctl``: an idle OpenBLAS pool or Intel/LLVM OpenMP pool (the usual
result of importing numpy) is safe, since those libraries stop their threads before a fork and
start them again after it; any other native thread is reported as a warning. An initialised GPU
context (CUDA) never survives fork and cannot be detected.

Workers are children of the template, so it reaps them and reports their exit status. They die
with it (parent-death signal), and it dies with the host, so a host killed with SIGKILL leaves no
worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import msgpack

from snakeden._errors import WorkerStartError, describe_exit
from snakeden._output import OutputTail, read_nonblocking, tail_text
from snakeden._process import (
    LaunchSpec,
    WorkerProcess,
    make_pipes,
    python_diagnosis,
    start_child,
    worker_env,
    worker_log_level,
)
from snakeden._template_proc import MAX_MSG

log = logging.getLogger("snakeden")


# --- host side ---------------------------------------------------------------------------------


class ForkLauncher:
    """Launches workers by asking a warm template process to fork."""

    name = "fork"
    runs_python = True

    def __init__(
        self,
        target: str | None,
        preload: Sequence[str] = (),
        *,
        python: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        run_tag: str = "",
        start_timeout: float = 60.0,
    ) -> None:
        self.target = target
        self.preload = tuple(preload)
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.cwd = cwd
        self.run_tag = run_tag
        self.start_timeout = start_timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.ready_info: dict[str, Any] = {}
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._forks: dict[str, asyncio.Future[int]] = {}
        # A forked worker and its exit report, whichever the host learnt of first (a worker that
        # dies at once can be reaped before the host reads the fork reply); see _meet.
        self._unmet: dict[int, WorkerProcess | int] = {}
        self._tails: list[OutputTail] = []
        self._tail_fds: tuple[int, ...] = ()
        self._restart_lock: asyncio.Lock | None = None
        self._closed = False
        self._background: asyncio.Task[None] | None = None
        # Set when we kill the template ourselves (after a failed start, or at close): its death
        # is then no news, and reporting it as "killed by SIGKILL: likely the OOM killer" would
        # point the user at the wrong cause.
        self._killing = False

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<ForkLauncher template pid={pid} target={self.target!r}>"

    def diagnose(self, stderr_lines: Sequence[str]) -> str | None:
        return python_diagnosis(self.python, stderr_lines)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._restart_lock = asyncio.Lock()
        await self._start_template()

    async def _start_template(self) -> None:
        assert self.loop is not None
        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child_fd = child_sock.detach()  # start_child closes it
        argv = [self.python, "-m", "snakeden._template_proc", self.target or ""]
        if self.preload:
            argv.append("--preload=" + ",".join(self.preload))
        argv.append(f"--snakeden-run={self.run_tag}")
        spec = LaunchSpec(
            worker_id="template",
            target=self.target,
            python=self.python,
            env=self.env,
            run_tag=self.run_tag,
        )
        env = worker_env(spec, -1, -1, os.getpid())
        env["SNAKEDEN_TEMPLATE_FD"] = str(child_fd)
        del env["SNAKEDEN_FDS"]
        try:
            self.proc, out_r, err_r = start_child(
                argv, env=env, cwd=self.cwd, child_fds=(child_fd,)
            )
        except OSError as exc:
            host_sock.close()
            raise WorkerStartError(
                f"cannot start the fork template with interpreter {self.python!r}: {exc}",
                {"template": str(exc)},
            ) from exc
        self.sock = host_sock
        self._killing = False
        host_sock.setblocking(False)
        self._tails = [
            OutputTail("stdout", "template", self.proc.pid),
            OutputTail("stderr", "template", self.proc.pid),
        ]
        self._tails[0].attach(self.loop, out_r)
        self._tails[1].attach(self.loop, err_r)
        self._tail_fds = (out_r, err_r)
        self._ready = self.loop.create_future()
        self.loop.add_reader(host_sock.fileno(), self._on_message)
        try:
            self.ready_info = await asyncio.wait_for(self._ready, self.start_timeout)
        except TimeoutError:
            await self._kill_template()
            raise WorkerStartError(
                f"the fork template did not say hello within {self.start_timeout}s while "
                f"importing {self.target!r}; raise start_timeout or check the module"
                + self._stderr_text(),
                {"template": "start timeout"},
            ) from None
        except WorkerStartError:
            await self._kill_template()
            raise
        warning = self.ready_info.get("warning")
        if warning:
            log.warning("fork template for %r: %s", self.target, warning)

    def _stderr_text(self) -> str:
        return tail_text(self._tails[1].last(20)) if self._tails else ""

    def _on_message(self, *_: object) -> None:
        assert self.sock is not None
        sock = self.sock
        while True:
            data = read_nonblocking(lambda: sock.recv(MAX_MSG))
            if data is None:
                return
            if not data:
                self._template_gone()
                return
            msg = msgpack.unpackb(data, raw=False)
            op = msg.get("op")
            if op == "ready":
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(msg)
            elif op == "error":
                err = WorkerStartError(
                    f"the fork template failed to import {self.target!r}: {msg.get('type')}: "
                    f"{msg.get('message')}\n--- template traceback ---\n{msg.get('traceback')}",
                    {"template": str(msg.get("traceback"))},
                )
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(err)
            elif op == "forked":
                fut = self._forks.pop(msg["worker_id"], None)
                if fut is not None and not fut.done():
                    if "error" in msg:
                        fut.set_exception(
                            WorkerStartError(
                                f"the template could not fork worker {msg['worker_id']}: "
                                f"{msg['error']}",
                                {msg["worker_id"]: msg["error"]},
                            )
                        )
                    else:
                        fut.set_result(int(msg["pid"]))
            elif op == "exited":
                self._meet(int(msg["pid"]), int(msg["returncode"]))

    def _meet(self, pid: int, arrival: WorkerProcess | int) -> None:
        """Pair a forked worker with its exit status (an int), in either order."""
        other = self._unmet.pop(pid, None)
        if isinstance(other, WorkerProcess) and isinstance(arrival, int):
            other.set_exited(arrival)
        elif isinstance(other, int) and isinstance(arrival, WorkerProcess):
            arrival.set_exited(other)
        else:  # the first to arrive (a stale status of a reused pid is replaced)
            self._unmet[pid] = arrival

    def _template_gone(self) -> None:
        """The template died (or closed its socket). Its workers die with it (parent-death
        signal); their exit statuses are lost, so report them as killed."""
        assert self.loop is not None
        self._close_sock()
        for fut in self._forks.values():
            if not fut.done():
                fut.set_exception(WorkerStartError("the fork template died", {}))
        self._forks.clear()
        # Exit statuses still unmet came from the dead template: its pids may be reused by the
        # next one's workers.
        unmet, self._unmet = self._unmet, {}
        for wp in unmet.values():
            if isinstance(wp, WorkerProcess):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(wp.pid, signal.SIGKILL)
                wp.set_exited(-signal.SIGKILL)
        if not self._closed:
            self._background = self.loop.create_task(
                self._report_template_exit(self.proc, self._ready)
            )

    async def _report_template_exit(
        self, proc: subprocess.Popen[bytes] | None, ready: asyncio.Future[dict[str, Any]] | None
    ) -> None:
        """Report the death of the template ``proc``: as the start failure if it had not said
        hello yet (``ready`` pending), else as an error, unless the pool itself killed it."""
        # End-of-file on the socket can arrive before the exit status: wait for the latter.
        code = None
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 5.0)
        for tail in self._tails:
            tail.drain()
        served = (
            ready is not None and ready.done() and not ready.cancelled() and not ready.exception()
        )
        if served and not self._closed and not self._killing:
            log.error(
                "the fork template (pid %s) died: %s; its workers die with it and a new template "
                "will be started",
                proc.pid if proc else "?",
                describe_exit(code),
            )
        if ready is not None and not ready.done():
            diagnosis = self.diagnose(self._tails[1].last(20) if self._tails else [])
            if diagnosis is not None:
                text = f"cannot start the fork template: {diagnosis}"
            else:
                text = f"the fork template died while importing {self.target!r}: " + describe_exit(
                    code
                )
            ready.set_exception(
                WorkerStartError(text + self._stderr_text(), {"template": diagnosis or text})
            )

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        assert self.loop is not None and self._restart_lock is not None
        if self.sock is None:
            async with self._restart_lock:
                if self.sock is None and not self._closed:
                    await self._reap_template()
                    await self._start_template()
        if self.sock is None:
            raise WorkerStartError("the fork launcher is closed", {spec.worker_id: "closed"})
        host_r, worker_w, worker_r, host_w = make_pipes()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fut: asyncio.Future[int] = self.loop.create_future()
        self._forks[spec.worker_id] = fut
        request = msgpack.packb(
            {
                "op": "fork",
                "worker_id": spec.worker_id,
                "max_frame": spec.max_frame_size,
                "log_level": worker_log_level(),
            }
        )
        try:
            socket.send_fds(self.sock, [request], [worker_r, worker_w, out_w, err_w])
        except OSError as exc:
            self._forks.pop(spec.worker_id, None)
            for fd in (host_r, worker_w, worker_r, host_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise WorkerStartError(f"cannot reach the fork template: {exc}", {}) from exc
        finally:
            for fd in (worker_r, worker_w, out_w, err_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        try:
            pid = await asyncio.wait_for(fut, self.start_timeout)
        except BaseException:
            self._forks.pop(spec.worker_id, None)
            for fd in (host_r, host_w, out_r, err_r):
                os.close(fd)
            raise
        wp = WorkerProcess(pid, read_fd=host_r, write_fd=host_w, stdout_fd=out_r, stderr_fd=err_r)
        self._meet(pid, wp)
        return wp

    async def _reap_template(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        for tail in self._tails:
            tail.detach()
        for fd in self._tail_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._tail_fds = ()

    def _close_sock(self) -> None:
        if self.sock is not None and self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    async def _kill_template(self) -> None:
        self._killing = True
        self._close_sock()
        await self._reap_template()
        # The death report of a template that failed to start: it must finish (not be left
        # pending for the loop to destroy), and it stays silent now that _killing is set.
        background = self._background
        if background is not None and background is not asyncio.current_task():
            with contextlib.suppress(Exception):
                await background

    async def close(self) -> None:
        self._closed = True
        if self._background is not None and not self._background.done():
            with contextlib.suppress(Exception):
                await self._background
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.send(msgpack.packb({"op": "shutdown"}))
        proc = self.proc
        if proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 5.0)
            except TimeoutError:
                pass
        await self._kill_template()

    def pids(self) -> Sequence[int]:
        return (self.proc.pid,) if self.proc is not None and self.proc.poll() is None else ()
