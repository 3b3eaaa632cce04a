"""What runs on a Ray node: the actor that owns one worker process and relays its bytes.

One :class:`WorkerActor` per worker, created by ``_ray_launcher.RayLauncher`` with no Ray-level
restarts or retries. It starts the worker exactly as a local pool does (``start_child``: its own
process group, the channel on a pipe pair, stdout/stderr on pipes) and then only moves bytes::

    host relay (writer thread) --write(seq, bytes)-->  actor --pipe--> worker
    host relay (reader thread) <--read() long poll---  actor <--pipe-- worker (+ stdout/stderr)
                                                       exit: (returncode, done) in read()

It never parses a frame: whatever the host and the worker say to each other (new frame kinds
included) passes byte for byte.

A threaded actor, not an async one: Ray calls a thread-pool actor's methods faster, and each
call crosses two of them (measured on the loaded 2-core benchmark VM, interleaved in one run: a
snakeden call through this actor took 2.9-4.4 ms, through the same relay on an async actor
3.7-6.1 ms). One thread of its own, the *owner*, forks the worker and pumps its pipes until it
exits; since a parent-death signal is tied to the thread that forked, the worker dies when the
actor dies, whatever kills it, and not before its exit otherwise. What the worker started in turn
is taken care of by a run watcher of the actor's own (``_watcher.py``, detached from the actor so
that Ray does not kill it along): it kills the worker's run when the actor dies without a clean
stop.

This module is imported on the nodes, inside Ray's worker processes; it imports Ray only for
the node's identity, and nothing of the pool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from typing import Any

from snakeden._process import LaunchSpec, make_pipes, start_child, worker_env
from snakeden._watcher import SCRIPT, Watcher

log = logging.getLogger("snakeden")

_READ_SIZE = 1 << 20
#: In an argv sent to a node: the interpreter Ray runs there (the host's path may not exist).
NODE_PYTHON = "{node-python}"
_IN = select.POLLIN | select.POLLHUP | select.POLLERR
_HIGH = 4 << 20  # bytes of one pipe's output held for the host before the worker is held back


class WorkerActor:
    """The Ray actor class (wrapped with ``ray.remote`` by the launcher): one worker process.

    Everything shared between Ray's method threads and the owner thread is under ``_cond``; only
    the owner thread opens and closes the pipes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.done = False
        # Worker -> host: the channel, stdout, stderr, in that order in read()'s answer.
        self._fds: list[int] = [-1, -1, -1]
        self._bufs = [bytearray(), bytearray(), bytearray()]
        # Host -> worker: written in the host's order (Ray does not order a threaded actor's
        # calls), buffered while the worker does not read.
        self._wfd = -1
        self._wbuf = bytearray()
        self._eof = False  # the host closed its end: close the worker's once wbuf is out
        self._next_seq = 0
        self._early: dict[int, tuple[bytes, bool]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._started = threading.Event()
        self._start: dict[str, Any] | str = "not started"
        self._watcher: Watcher | None = None
        self._watcher_pid: int | None = None

    def start(self, argv: list[str], spec: LaunchSpec, cwd: str | None) -> dict[str, Any] | str:
        """Start the worker; where it runs (pid, node id and address), or why it could not."""
        if NODE_PYTHON in argv:
            argv = [sys.executable if a == NODE_PYTHON else a for a in argv]
            spec = replace(spec, python=sys.executable)
        owner = threading.Thread(
            target=self._own, args=(argv, spec, cwd), name="snakeden-owner", daemon=True
        )
        owner.start()
        self._started.wait()
        return self._start

    # --- the owner thread ------------------------------------------------------------------------

    def _own(self, argv: list[str], spec: LaunchSpec, cwd: str | None) -> None:
        import ray

        host_r, worker_w, worker_r, host_w = make_pipes()
        env = worker_env(spec, worker_r, worker_w, os.getpid())
        try:
            proc, out_r, err_r = start_child(argv, env=env, cwd=cwd, child_fds=(worker_r, worker_w))
        except OSError as exc:
            os.close(host_r)
            os.close(host_w)
            self._start = f"{exc} (argv {argv!r}, cwd {cwd!r})"
            self._started.set()
            return
        self._watcher, self._watcher_pid = detached_watcher(spec.run_tag)
        self._watcher.add(proc.pid)
        for fd in (host_r, out_r, err_r, host_w):
            os.set_blocking(fd, False)
        with self._cond:
            self.proc = proc
            self._fds = [host_r, out_r, err_r]
            self._wfd = host_w
        self._start = {
            "pid": proc.pid,
            "node": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "actor_pid": os.getpid(),
            "watcher_pid": self._watcher_pid,
        }
        self._started.set()
        self._pump(proc)

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = -1  # an old kernel: look at the process between polls
        poller = select.poll()
        poller.register(self._wake_r, _IN)
        if pidfd >= 0:
            poller.register(pidfd, _IN)
        polled: set[int] = set()  # the worker's pipes being read: not those the host lags on
        polled_wfd = -1  # the worker's end while the host's bytes wait for room in its pipe
        while True:
            with self._cond:
                self._close_writer_if_done()
                want_wfd = self._wfd if self._wbuf else -1
                # A host that does not take the output (its pipe is full) holds the worker's
                # writes back, as a pipe would, instead of filling this process's memory.
                pairs = zip(self._fds, self._bufs, strict=True)
                want = {fd for fd, b in pairs if fd >= 0 and len(b) < _HIGH}
            for fd in polled - want:
                poller.unregister(fd)
            for fd in want - polled:
                poller.register(fd, _IN)
            polled = want
            if want_wfd != polled_wfd:
                if polled_wfd >= 0:
                    poller.unregister(polled_wfd)
                if want_wfd >= 0:
                    poller.register(want_wfd, select.POLLOUT)
                polled_wfd = want_wfd
            exited = False
            for fd, _ev in poller.poll(None if pidfd >= 0 else 50):
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif fd == pidfd:
                    exited = True
                elif fd == polled_wfd:
                    with self._cond:
                        self._flush()
                elif fd in polled and self._read_some(self._fds.index(fd)) is None:
                    poller.unregister(fd)
                    polled.discard(fd)
                    self._close_reader(fd)
            if exited or (pidfd < 0 and proc.poll() is not None):
                break
        if pidfd >= 0:
            os.close(pidfd)
        self._exited(proc)

    def _read_some(self, i: int) -> int | None:
        """Move what the worker wrote on pipe ``i`` into its buffer: how many bytes (0: none
        yet), None at the pipe's end."""
        try:
            data = os.read(self._fds[i], _READ_SIZE)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        with self._cond:
            if data:
                self._bufs[i] += data
            self._cond.notify_all()
        return len(data) if data else None

    def _close_reader(self, fd: int) -> None:
        with self._cond:
            self._fds[self._fds.index(fd)] = -1
        os.close(fd)

    def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        # As a local pool does on every exit: what the worker left in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        # What the worker wrote before it died is in the pipes: drain, then report the end. A
        # pipe still open but empty (a grandchild holding stdout) is not waited for.
        for i, fd in enumerate(list(self._fds)):
            if fd >= 0:
                while self._read_some(i):
                    pass
                self._close_reader(fd)
        if self._watcher is not None:
            self._watcher.discard(proc.pid)
            self._watcher.close()
            self._watcher = None
        with self._cond:
            self._eof = True
            self._wbuf.clear()
            self._close_writer_if_done()
            self.returncode = code
            self.done = True
            self._cond.notify_all()

    # --- host -> worker (Ray's threads, under _cond) ------------------------------------------

    def _flush(self) -> None:
        try:
            while self._wbuf and self._wfd >= 0:
                del self._wbuf[: os.write(self._wfd, self._wbuf)]
        except BlockingIOError:
            pass
        except OSError:
            self._wbuf.clear()  # the worker is gone: nobody will read it
            self._eof = True

    def _close_writer_if_done(self) -> None:
        """Owner thread only: close the worker's end once the host's end has closed."""
        if self._eof and not self._wbuf and self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1

    def _wake_owner(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def write(self, seq: int, data: bytes, eof: bool = False) -> None:
        """The host's bytes number ``seq``; ``eof``: the host closed its end of the channel."""
        with self._cond:
            if seq != self._next_seq:
                self._early[seq] = (data, eof)
                return
            while True:
                self._next_seq += 1
                self._wbuf += data
                self._eof = self._eof or eof
                if self._next_seq not in self._early:
                    break
                data, eof = self._early.pop(self._next_seq)
            self._flush()
            wake = bool(self._wbuf) or self._eof
        if wake:
            self._wake_owner()

    # --- worker -> host --------------------------------------------------------------------------

    def read(self) -> tuple[bytes, bytes, bytes, int | None, bool]:
        """Wait for output (or the end): ``(channel, stdout, stderr, returncode, done)``.

        ``done`` comes once the worker exited and its pipes were drained; nothing follows it."""
        with self._cond:
            while not (self.done or any(self._bufs)):
                self._cond.wait()
            out = tuple(bytes(b) for b in self._bufs)
            held_back = any(len(b) >= _HIGH for b in self._bufs)
            for b in self._bufs:
                b.clear()
        if held_back:
            self._wake_owner()  # read the worker's pipes again
        return out[0], out[1], out[2], self.returncode, self.done

    # --- control ---------------------------------------------------------------------------------

    def kill(self, sig: int) -> None:
        """Signal the worker's process group, as a local pool does."""
        with self._cond:
            if self.proc is None or self.done:
                return
            pid = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)

    def ping(self) -> int:
        return os.getpid()


_DETACH = """import os, sys
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
os.setsid()
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 1)  # the starter's stdout: its reader waits for the end of it
os.dup2(null, 2)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def detached_watcher(run_tag: str) -> tuple[Watcher, int | None]:
    """A run watcher (``_watcher.py``) for this actor, as its grandchild rather than its child.

    Ray kills the direct children of a worker process that exits (its
    ``kill_child_processes_on_worker_exit``), which would take a child watcher with the actor
    before it could act, and leave what the worker started behind. Started through a process
    that forks it and exits at once, the watcher belongs to init: it sees the actor die
    (end-of-file on its stdin) and kills the run. Returns the watcher and its pid; a disabled
    watcher (logged) if it cannot start.
    """
    read_fd, write_fd = os.pipe()  # both close-on-exec: the worker does not inherit them
    argv = [sys.executable, "-I", "-S", "-c", _DETACH, "-I", "-S", "-c", SCRIPT, run_tag]
    argv += [str(os.getpid()), str(os.getpgid(0)), str(os.getsid(0))]
    env = {k: v for k, v in os.environ.items() if k != "SNAKEDEN_RUN_TAG"}
    try:
        starter = subprocess.Popen(
            argv, stdin=read_fd, stdout=subprocess.PIPE, env=env, cwd="/", start_new_session=True
        )
        out, _ = starter.communicate(timeout=30)
        pid = int(out)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        os.close(write_fd)
        log.warning("no run watcher for a Ray actor (%s): what its worker starts may last", exc)
        return Watcher(run_tag), None
    finally:
        os.close(read_fd)
    os.set_blocking(write_fd, False)  # a watcher that stops reading must not block the actor
    return Watcher(run_tag, None, write_fd), pid
