"""The one seam through which a worker process comes to life.

A :class:`Launcher` turns a :class:`LaunchSpec` into a :class:`WorkerProcess`: a pid, the host ends
of the channel and of the worker's stdout/stderr, a way to signal it, and notification of its exit.
The pool never forks or execs itself. Today there are two launchers: :class:`SpawnLauncher` (a
fresh interpreter per worker) and ``ForkLauncher`` in ``_template.py`` (workers forked warm from a
template process). A remote launcher (a Ray actor owning the worker elsewhere) fits the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from snakeden._errors import WorkerStartError


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launcher needs to start one worker."""

    worker_id: str
    target: str | None
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    run_tag: str = ""
    max_frame_size: int = 0


class WorkerProcess:
    """A started worker as the host sees it. Launchers fill in how exit becomes known."""

    def __init__(
        self,
        pid: int,
        *,
        read_fd: int,
        write_fd: int,
        stdout_fd: int | None,
        stderr_fd: int | None,
    ) -> None:
        self.pid = pid
        self.read_fd = read_fd  # host reads worker->host frames here
        self.write_fd = write_fd  # host writes host->worker frames here
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.returncode: int | None = None
        self._exited = threading.Event()
        self._callbacks: list[Callable[[WorkerProcess], None]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} returncode={self.returncode}>"

    def set_exited(self, returncode: int | None) -> None:
        """Record the exit status (called once by the launcher) and run the exit callbacks."""
        with self._lock:
            if self._exited.is_set():
                return
            self.returncode = returncode
            self._exited.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def on_exit(self, cb: Callable[[WorkerProcess], None]) -> None:
        """Call ``cb(self)`` once the exit status is known (at once if it already is)."""
        with self._lock:
            if not self._exited.is_set():
                self._callbacks.append(cb)
                return
        cb(self)

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's process group (it leads its own): what it started dies too."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        if not self.exited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    def close_fds(self) -> None:
        for name in ("read_fd", "write_fd", "stdout_fd", "stderr_fd"):
            fd = getattr(self, name)
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)


class Launcher(Protocol):
    """Starts worker processes. Implementations must be usable from the pool's event loop."""

    name: str

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Prepare (e.g. start a template). Raises WorkerStartError if that fails."""

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        """Start one worker; its exit must later be reported through ``set_exited``."""

    async def close(self) -> None:
        """Release what ``start`` acquired."""

    def pids(self) -> Sequence[int]:
        """Helper processes the launcher itself runs (e.g. the template), for leak checks."""


def make_pipes() -> tuple[int, int, int, int]:
    """Two pipes for a channel: (host_read, worker_write, worker_read, host_write)."""
    w2h_r, w2h_w = os.pipe()
    h2w_r, h2w_w = os.pipe()
    if sys.platform.startswith("linux"):
        import fcntl

        for fd in (w2h_w, h2w_w):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups per large frame
    return w2h_r, w2h_w, h2w_r, h2w_w


def worker_env(spec: LaunchSpec, rfd: int, wfd: int, parent_pid: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.env)
    env.update(
        {
            "SNAKEDEN_FDS": f"{rfd},{wfd}",
            "SNAKEDEN_WORKER_ID": spec.worker_id,
            "SNAKEDEN_MAX_FRAME": str(spec.max_frame_size),
            "SNAKEDEN_HOST_PID": str(parent_pid),
            "SNAKEDEN_RUN_TAG": spec.run_tag,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_child(
    argv: list[str], *, env: dict[str, str], cwd: str | None, child_fds: tuple[int, ...]
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start a worker or template: in its own process group (so a kill takes what it starts
    along), stdout and stderr on fresh pipes, ``child_fds`` inherited.

    Returns the process and the host's ends of its stdout and stderr. ``child_fds`` are the
    child's: they are closed here, also when the start fails (``OSError``, with every pipe
    closed).
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        # The launchers call this on the loop thread, not in an executor, on purpose: fork+exec
        # takes ~1 ms, and the child's parent-death signal is tied to the thread that forked
        # it, which must outlive it.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            pass_fds=child_fds,
            env=env,
            cwd=cwd,
            process_group=0,
        )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (*child_fds, out_w, err_w):
            os.close(fd)
    return proc, out_r, err_r


class PidfdWatcher:
    """Turns process exit into a loop callback using pidfds (Linux >= 5.3), else a thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def watch(self, proc: subprocess.Popen[bytes], wp: WorkerProcess) -> None:
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            threading.Thread(
                target=lambda: wp.set_exited(proc.wait()), daemon=True, name="snakeden-wait"
            ).start()
            return

        def on_ready() -> None:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
            wp.set_exited(proc.wait())

        self.loop.add_reader(pidfd, on_ready)


class SpawnLauncher:
    """A fresh interpreter per worker: ``python -m snakeden.worker target``.

    Slow to start (the interpreter plus every import), but works everywhere and with any
    interpreter, e.g. another virtual environment's ``python``.
    """

    name = "spawn"

    def __init__(self) -> None:
        self._watcher: PidfdWatcher | None = None

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher = PidfdWatcher(loop)

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        assert self._watcher is not None, "launcher not started"
        host_r, worker_w, worker_r, host_w = make_pipes()
        argv = [spec.python, "-m", "snakeden.worker"]
        if spec.target:
            argv.append(spec.target)
        argv.append(f"--snakeden-run={spec.run_tag}")
        try:
            proc, out_r, err_r = start_child(
                argv,
                env=worker_env(spec, worker_r, worker_w, os.getpid()),
                cwd=spec.cwd,
                child_fds=(worker_r, worker_w),
            )
        except OSError as exc:
            os.close(host_r)
            os.close(host_w)
            raise WorkerStartError(
                f"cannot start worker {spec.worker_id} with interpreter {spec.python!r}: {exc}. "
                f"Check the path (python=...) and that it has snakeden installed",
                {spec.worker_id: str(exc)},
            ) from exc
        wp = WorkerProcess(
            proc.pid, read_fd=host_r, write_fd=host_w, stdout_fd=out_r, stderr_fd=err_r
        )
        self._watcher.watch(proc, wp)
        return wp

    async def close(self) -> None:
        return None

    def pids(self) -> Sequence[int]:
        return ()
