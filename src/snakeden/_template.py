"""The fork template: one warm process per pool, from which workers are forked in milliseconds.

Host side (:class:`ForkLauncher`) and template side (:func:`template_main`) in one module::

    host (ForkLauncher)                           template (python -m snakeden._template)
    -------------------                           ---------------------------------------
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
import threading
import traceback
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

log = logging.getLogger("snakeden")

_MAX_MSG = 64 * 1024
EXIT_TEMPLATE_FAILED = 3


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
        argv = [self.python, "-m", "snakeden._template", self.target or ""]
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
            data = read_nonblocking(lambda: sock.recv(_MAX_MSG))
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


# --- template side -----------------------------------------------------------------------------


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(msgpack.packb(msg))


def _fail(sock: socket.socket, text: str, type_name: str, message: str, tb: str) -> int:
    """Report a failed start to the host; on stderr only if that fails (the host logs our
    stderr, so printing it too would show the user the traceback twice). The exit code."""
    try:
        _send(sock, {"op": "error", "type": type_name, "message": message, "traceback": tb})
    except OSError:
        print(f"snakeden template: {text}", file=sys.stderr, flush=True)
    return EXIT_TEMPLATE_FAILED


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _fork_safe_pool(pool: dict[str, Any]) -> bool:
    """An idle thread pool that stops before fork() and restarts after it (pthread_atfork):
    OpenBLAS on pthreads, and the Intel and LLVM OpenMP runtimes (MKL's threads are the
    former's). GNU OpenMP (libgomp) is not: a child that uses it after the parent did hangs."""
    api = pool.get("internal_api")
    if api == "openblas":
        return pool.get("threading_layer") == "pthreads"
    if api == "openmp":
        return pool.get("prefix") in ("libiomp", "libomp")
    return False


def thread_warning() -> str | None:
    """``None`` when the native threads now running are safe to fork from; else one line on
    what they are and what to do."""
    extra = _native_threads() - 1
    if extra <= 0:
        return None
    try:
        import threadpoolctl
    except ImportError:
        return (
            f"{extra} native thread(s) besides the main one after import, not identified "
            f"(install threadpoolctl to tell an idle BLAS pool, which is safe, from a hazard); "
            f"if workers hang, use start_method='spawn'"
        )
    try:
        pools: list[dict[str, Any]] = threadpoolctl.threadpool_info()
    except Exception:  # it inspects native libraries: never let that break a start
        pools = []
    # An upper bound: a pool's num_threads counts the main thread and threads not started yet.
    explained = sum(max(0, int(p.get("num_threads") or 1) - 1) for p in pools if _fork_safe_pool(p))
    if extra <= explained:
        return None
    gomp = any(p.get("prefix") == "libgomp" for p in pools)
    return (
        f"{extra - explained} native thread(s) after import that are not an idle BLAS pool "
        + ("(GNU OpenMP's, which does not survive fork?)" if gomp else "(a C extension's?)")
        + "; forked workers get none of them and any lock they held stays locked: start them "
        "in setup(), or use start_method='spawn' if workers hang"
    )


def template_main(argv: list[str]) -> int:
    from snakeden import _worker_os, _worker_tracing, worker

    sock = socket.socket(fileno=int(os.environ["SNAKEDEN_TEMPLATE_FD"]))
    os.set_inheritable(sock.fileno(), False)
    host = os.environ.get("SNAKEDEN_HOST_PID")
    _worker_os.die_with_parent(int(host) if host else None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_os.adopt_host_path()  # before any import; forked workers inherit the result
    target = next((a for a in argv if not a.startswith("--")), "") or None
    preload = next((a.split("=", 1)[1] for a in argv if a.startswith("--preload=")), "")
    try:
        import importlib

        for name in filter(None, preload.split(",")):
            importlib.import_module(name)
        loaded = worker.import_target(target) if target else None
        # Looked up once here, not in every forked worker (a file-system search, ~0.4 ms).
        _worker_tracing.available()
    except BaseException as exc:
        tb = "".join(traceback.format_exception(exc))
        return _fail(sock, f"import failed\n{tb}", type(exc).__qualname__, str(exc), tb)
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        message = (
            f"importing {target!r} (or a preload module) started Python threads ({names}); "
            f"forking a process with threads is unsafe. Start threads in set-up (setup()) "
            f"instead of at import, or use start_method='spawn'"
        )
        return _fail(sock, message, "RuntimeError", message, message)
    ready: dict[str, Any] = {"op": "ready", "pid": os.getpid(), "threads": _native_threads()}
    warning = thread_warning()
    if warning is not None:
        ready["warning"] = warning
    _send(sock, ready)
    return _serve_forks(sock, target, loaded)


def _serve_forks(sock: socket.socket, target: str | None, loaded: Any) -> int:
    import select

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # delivery only; the wakeup fd does the work
    children: set[int] = set()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _ev in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(sock, children)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MSG, 8)
            except InterruptedError:
                continue
            except OSError:
                data, fds = b"", []
            if not data:
                # The host is gone: take every worker with us.
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                return 0
            msg = msgpack.unpackb(data, raw=False)
            if msg.get("op") == "shutdown":
                return 0
            if msg.get("op") == "fork" and len(fds) == 4:
                pid = _fork_worker(sock, (wake_r, wake_w), fds, msg, target, loaded)
                for passed in fds:
                    os.close(passed)
                if pid > 0:
                    children.add(pid)
                    _send(sock, {"op": "forked", "worker_id": msg["worker_id"], "pid": pid})
                # Reap anything that exited while we were forking.
                _reap(sock, children)
            else:
                for passed in fds:
                    os.close(passed)


def _reap(sock: socket.socket, children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        with contextlib.suppress(OSError):
            _send(
                sock, {"op": "exited", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)}
            )


def _fork_worker(  # noqa: PLR0917
    sock: socket.socket,
    wake: tuple[int, int],
    fds: list[int],
    msg: dict[str, Any],
    target: str | None,
    loaded: Any,
) -> int:
    from snakeden import _worker_logging, _worker_os, worker

    template_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        _send(sock, {"op": "forked", "worker_id": msg["worker_id"], "error": str(exc)})
        return -1
    if pid:
        return pid
    # --- in the worker ---
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in wake:
            os.close(fd)
        os.setpgid(0, 0)
        rfd, wfd, out_fd, err_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        worker_id = str(msg["worker_id"])
        os.environ[_worker_logging.LOG_LEVEL_ENV] = str(msg.get("log_level", logging.WARNING))
        os.environ["SNAKEDEN_WORKER_ID"] = worker_id
        os.environ["SNAKEDEN_FDS"] = f"{rfd},{wfd}"
        _worker_os.die_with_parent(template_pid)
        _worker_os.prepare_process()
        code = worker.serve(
            target,
            rfd=rfd,
            wfd=wfd,
            worker_id=worker_id,
            max_frame_size=int(msg["max_frame"]),
            preloaded=loaded,
        )
    except SystemExit as exc:
        # Exit as the interpreter would for an uncaught SystemExit, so forked and spawned
        # workers report the same exit code.
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(template_main(sys.argv[1:]))
