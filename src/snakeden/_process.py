"""The one seam through which a worker process comes to life.

A :class:`Launcher` turns a :class:`LaunchSpec` into a :class:`WorkerProcess`: a pid, the host ends
of the channel and of the worker's stdout/stderr, a way to signal it, and notification of its exit.
The pool never forks or execs itself. The launchers: :class:`SpawnLauncher` (a fresh interpreter
per worker), :class:`CommandLauncher` (any program), ``ForkLauncher`` in ``_template.py`` (workers
forked warm from a template process) and ``RayLauncher`` in ``_ray_launcher.py`` (a Ray actor
owning the worker on a cluster node; the host ends of its channel are local pipes a relay feeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.machinery import PathFinder
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
    """A started worker as the host sees it. Launchers fill in how exit becomes known.

    ``local`` is False for a worker on another machine (``_ray_launcher``): its ``pid`` is then
    a pid on *that* machine, which the host must never signal, watch or read ``/proc`` for.
    ``node`` names the machine (None: this one); ``lost`` says why the worker was lost with its
    machine or its remote owner (None while it has not been, and for every local worker).
    """

    local = True

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
        self.node: str | None = None
        self.lost: str | None = None
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

    def kill_group(self) -> None:
        """After the exit: SIGKILL what the worker left in its process group (a worker that died
        on its own did not get the chance to clean up)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

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
    #: True when the workers run snakeden's Python runtime, so advice about modules, ``pip`` and
    #: ``@snakeden.command`` applies to them (a worker in another language would be misled).
    runs_python: bool

    def diagnose(self, stderr_lines: Sequence[str]) -> str | None:
        """The real cause of a start-up death, read from the process's last stderr lines, in
        this launcher's terms; ``None`` when the lines show nothing it recognises."""

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
            "SNAKEDEN_SYS_PATH": json.dumps(host_import_path(spec.python)),
            "SNAKEDEN_LOG_LEVEL": str(worker_log_level()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("SNAKEDEN_TARGET_ORIGIN", None)  # a nested pool's host must not pass on its own
    origin = target_origin(spec.target)
    if origin is not None:
        env["SNAKEDEN_TARGET_ORIGIN"] = origin
    return env


def worker_log_level() -> int:
    """The level a worker's unconfigured root logger gets: what the host would keep of it, so
    records the host drops are not even written."""
    return logging.getLogger("snakeden.worker").getEffectiveLevel()


def same_python(python: str | None) -> bool:
    """Whether ``python`` runs this interpreter *in this environment*. A venv's ``python`` is a
    symlink to the base interpreter, so the resolved binary alone does not tell: the directory
    it is called from (where Python looks for ``pyvenv.cfg``) must match too."""
    if python is None:
        return True
    mine, theirs = sys.executable, python
    return os.path.realpath(mine) == os.path.realpath(theirs) and os.path.dirname(
        os.path.abspath(mine)
    ) == os.path.dirname(os.path.abspath(theirs))


def host_import_path(python: str | None) -> list[str]:
    """The import path a worker prepends to its own, so it finds what the host finds.

    For the host's own interpreter that is the host's ``sys.path`` (existing entries, made
    absolute), as ``multiprocessing`` passes it. Another interpreter or venv gets only the
    script's directory (``sys.path[0]``): the host's stdlib, site-packages and ``.pth`` entries
    are built for the host and would shadow the worker's own packages.
    """
    cwd = os.getcwd()
    entries = sys.path if same_python(python) else sys.path[:1]
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    path: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            continue
        full = os.path.normpath(os.path.join(cwd, entry))  # "" is the cwd the host imports from
        if full in path or not os.path.exists(full):
            continue
        if not same_python(python) and any(_inside(full, p) for p in prefixes):
            continue  # e.g. a console script's bin/ directory: the host's environment
        path.append(full)
    return path


def _inside(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip(os.sep) + os.sep)


def target_origin(target: str | None) -> str | None:
    """Where the host finds the target's module, without importing anything (a parent package
    is not imported either: its submodules are looked up in its directories): the file a
    worker's "module not found" error points at."""
    if not target:
        return None
    parts = target.partition(":")[0].split(".")
    spec = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        try:
            if loaded is not None:
                spec = loaded.__spec__
            elif spec is None:  # top level: every finder (an editable install's too)
                spec = importlib.util.find_spec(name)
            else:
                spec = PathFinder.find_spec(name, list(spec.submodule_search_locations or []))
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
    assert spec is not None
    if spec.origin and spec.has_location:
        return spec.origin
    return str(list(spec.submodule_search_locations or [])) or spec.origin or spec.name


_NO_SNAKEDEN = re.compile(r"No module named '?snakeden(\.\w+)*'?\b")
_MISSING = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")


def python_diagnosis(python: str, stderr_lines: Sequence[str]) -> str | None:
    """Recognise, in the last stderr lines of a process that died before saying hello, that
    ``python`` cannot run snakeden at all (not installed, or a dependency missing)."""
    text = "\n".join(stderr_lines)
    fix = f"install it there with `{python} -m pip install snakeden`"
    if _NO_SNAKEDEN.search(text):
        return f"snakeden is not installed in {python}, the interpreter the workers run; {fix}"
    missing = _MISSING.search(text)
    if missing and "<frozen runpy>" in text and f"{os.sep}snakeden{os.sep}" in text:
        return (
            f"snakeden cannot be imported in {python}: its dependency {missing.group(1)!r} is "
            f"missing there; {fix}, which brings its dependencies"
        )
    return None


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


class _ExecLauncher:
    """A fresh process per worker from an argv, through ``start_child``; what differs between
    a Python interpreter and any other program is its argv, its environment and its advice."""

    name = "exec"
    runs_python = False

    def __init__(self) -> None:
        self._watcher: PidfdWatcher | None = None

    def diagnose(self, stderr_lines: Sequence[str]) -> str | None:
        return None

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher = PidfdWatcher(loop)

    def argv_for(self, spec: LaunchSpec) -> list[str]:
        raise NotImplementedError

    def env_for(self, spec: LaunchSpec, rfd: int, wfd: int) -> dict[str, str]:
        return worker_env(spec, rfd, wfd, os.getpid())

    def start_error(self, spec: LaunchSpec, argv: list[str], exc: OSError) -> str:
        raise NotImplementedError

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        assert self._watcher is not None, "launcher not started"
        host_r, worker_w, worker_r, host_w = make_pipes()
        argv = self.argv_for(spec)
        try:
            proc, out_r, err_r = start_child(
                argv,
                env=self.env_for(spec, worker_r, worker_w),
                cwd=spec.cwd,
                child_fds=(worker_r, worker_w),
            )
        except OSError as exc:
            os.close(host_r)
            os.close(host_w)
            raise WorkerStartError(
                self.start_error(spec, argv, exc), {spec.worker_id: str(exc)}
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


class SpawnLauncher(_ExecLauncher):
    """A fresh interpreter per worker: ``python -m snakeden.worker target``.

    Slow to start (the interpreter plus every import), but works everywhere and with any
    interpreter, e.g. another virtual environment's ``python``.
    """

    name = "spawn"
    runs_python = True

    def __init__(self) -> None:
        super().__init__()
        self._python = sys.executable

    def diagnose(self, stderr_lines: Sequence[str]) -> str | None:
        return python_diagnosis(self._python, stderr_lines)

    def argv_for(self, spec: LaunchSpec) -> list[str]:
        self._python = spec.python
        argv = [spec.python, "-m", "snakeden.worker"]
        if spec.target:
            argv.append(spec.target)
        return [*argv, f"--snakeden-run={spec.run_tag}"]

    def start_error(self, spec: LaunchSpec, argv: list[str], exc: OSError) -> str:
        return (
            f"cannot start worker {spec.worker_id} with interpreter {spec.python!r}: {exc}. "
            f"Check the path (python=...) and that it has snakeden installed"
        )


_NODE_MISSING_MODULE = re.compile(r"Error: Cannot find module '([^']+)'")


class CommandLauncher(_ExecLauncher):
    """Any program as a worker: the pool option ``command`` (an argv), plus ``target`` as its
    last argument when one is given.

    The program gets what a Python worker gets (``worker_env``: the channel fds, its id, the
    host pid, the run tag; its own process group; stdout/stderr to the host's logging) and must
    speak ``docs/protocol.md``. No ``--snakeden-run=`` argument is appended, since an arbitrary
    program may refuse unknown arguments; the run tag in its environment is what the reaper and
    the watcher look for.
    """

    name = "command"
    runs_python = False

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__()
        self.argv = list(argv)

    def diagnose(self, stderr_lines: Sequence[str]) -> str | None:
        text = "\n".join(stderr_lines)
        missing = _NODE_MISSING_MODULE.search(text)
        if missing:
            return (
                f"node cannot find the module {missing.group(1)!r}; check the paths in "
                f"command={self.argv!r} (relative ones are taken from the worker's cwd)"
            )
        return None

    def argv_for(self, spec: LaunchSpec) -> list[str]:
        return [*self.argv, spec.target] if spec.target else list(self.argv)

    def env_for(self, spec: LaunchSpec, rfd: int, wfd: int) -> dict[str, str]:
        # The target is the program's argument, not a Python module: no import-origin lookup.
        return worker_env(replace(spec, target=None), rfd, wfd, os.getpid())

    def start_error(self, spec: LaunchSpec, argv: list[str], exc: OSError) -> str:
        return (
            f"cannot start worker {spec.worker_id} with command {argv!r}: {exc}. Check that "
            f"the program exists and is executable (command=...; cwd={spec.cwd!r})"
        )
