"""What runs on a Ray node: the actor that owns one worker process and relays its bytes.

One :class:`WorkerActor` per worker, created by ``_ray_launcher.RayLauncher`` with no Ray-level
restarts or retries. It starts the worker exactly as a local pool does (``start_child``: its own
process group, the channel on a pipe pair, stdout/stderr on pipes) and then only moves bytes::

    host relay (writer thread) --write(seq, bytes)-->  actor --pipe--> worker
    host relay (reader thread) <--read() long poll---  actor <--pipe-- worker (+ stdout/stderr)
                                                       exit: (returncode, done) in read()

It never parses a frame: whatever the host and the worker say to each other (new frame kinds
included) passes byte for byte. All of it runs on the actor's one event-loop thread, which also
forked the worker, so the worker's parent-death signal fires when the actor dies, whatever kills
it. What the worker started in turn is taken care of by a run watcher of the actor's own
(``_watcher.py``): it kills the worker's run when the actor dies without a clean stop.

This module is imported on the nodes, inside Ray's worker processes; it imports Ray only for
the node's identity, and nothing of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import replace
from typing import Any

from snakeden._process import LaunchSpec, make_pipes, start_child, worker_env
from snakeden._watcher import Watcher

_READ_SIZE = 1 << 20
#: In an argv sent to a node: the interpreter Ray runs there (the host's path may not exist).
NODE_PYTHON = "{node-python}"


class WorkerActor:
    """The Ray actor class (wrapped with ``ray.remote`` by the launcher): one worker process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.done = False
        # Worker -> host: the channel, stdout, stderr, in that order in read()'s answer.
        self._fds: list[int] = [-1, -1, -1]
        self._bufs = [bytearray(), bytearray(), bytearray()]
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Host -> worker: written in the host's order (Ray does not order an async actor's
        # calls), buffered while the worker does not read.
        self._wfd = -1
        self._wbuf = bytearray()
        self._writing = False
        self._next_seq = 0
        self._early: dict[int, tuple[bytes, bool]] = {}
        self._watcher: Watcher | None = None

    async def start(
        self, argv: list[str], spec: LaunchSpec, cwd: str | None
    ) -> dict[str, Any] | str:
        """Start the worker; where it runs (pid, node id and address), or why it could not."""
        import ray

        loop = asyncio.get_running_loop()
        self._loop = loop
        self._changed = asyncio.Event()
        if NODE_PYTHON in argv:
            argv = [sys.executable if a == NODE_PYTHON else a for a in argv]
            spec = replace(spec, python=sys.executable)
        host_r, worker_w, worker_r, host_w = make_pipes()
        env = worker_env(spec, worker_r, worker_w, os.getpid())
        try:
            proc, out_r, err_r = start_child(argv, env=env, cwd=cwd, child_fds=(worker_r, worker_w))
        except OSError as exc:
            os.close(host_r)
            os.close(host_w)
            return f"{exc} (argv {argv!r}, cwd {cwd!r})"
        self.proc = proc
        self._watcher = Watcher.start(spec.run_tag)
        self._watcher.add(proc.pid)
        self._fds = [host_r, out_r, err_r]
        for i, fd in enumerate(self._fds):
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._readable, i)
        os.set_blocking(host_w, False)
        self._wfd = host_w
        try:
            pidfd = os.pidfd_open(proc.pid)
            loop.add_reader(pidfd, self._pidfd_ready, pidfd)
        except (AttributeError, OSError):
            loop.run_in_executor(None, self._wait_thread)
        return {
            "pid": proc.pid,
            "node": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "actor_pid": os.getpid(),
            "watcher_pid": self._watcher.pid,
        }

    # --- worker -> host --------------------------------------------------------------------------

    def _readable(self, i: int) -> None:
        fd = self._fds[i]
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._bufs[i] += data
        else:
            self._close_reader(i)
        self._wake()

    def _close_reader(self, i: int) -> None:
        fd, self._fds[i] = self._fds[i], -1
        if fd >= 0 and self._loop is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def read(self) -> tuple[bytes, bytes, bytes, int | None, bool]:
        """Wait for output (or the end): ``(channel, stdout, stderr, returncode, done)``.

        ``done`` comes once, after the worker exited and its pipes were drained; nothing
        follows it."""
        assert self._changed is not None, "start() first"
        while not (self.done or any(self._bufs)):
            self._changed.clear()
            await self._changed.wait()
        out = tuple(bytes(b) for b in self._bufs)
        for b in self._bufs:
            b.clear()
        return out[0], out[1], out[2], self.returncode, self.done

    def _pidfd_ready(self, pidfd: int) -> None:
        assert self._loop is not None and self.proc is not None
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        self._exited(self.proc.wait())

    def _wait_thread(self) -> None:
        assert self._loop is not None and self.proc is not None
        code = self.proc.wait()
        self._loop.call_soon_threadsafe(self._exited, code)

    def _exited(self, code: int) -> None:
        assert self.proc is not None
        # As a local pool does on every exit: what the worker left in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        # What the worker wrote before it died is in the pipes: drain, then report the end.
        for i in range(3):
            while self._fds[i] >= 0:
                try:
                    data = os.read(self._fds[i], _READ_SIZE)
                except BlockingIOError:
                    self._close_reader(i)  # a grandchild holding stdout open: not waited for
                    break
                except OSError:
                    data = b""
                if not data:
                    self._close_reader(i)
                    break
                self._bufs[i] += data
        self._close_writer()
        if self._watcher is not None:
            self._watcher.discard(self.proc.pid)
            self._watcher.close()
            self._watcher = None
        self.returncode = code
        self.done = True
        self._wake()

    # --- host -> worker --------------------------------------------------------------------------

    async def write(self, seq: int, data: bytes, eof: bool = False) -> None:
        """The host's bytes number ``seq``; ``eof``: the host closed its end of the channel."""
        if seq != self._next_seq:
            self._early[seq] = (data, eof)
            return
        while True:
            self._next_seq += 1
            self._wbuf += data
            self._flush()
            if eof:
                self._close_writer()
            if self._next_seq not in self._early:
                return
            data, eof = self._early.pop(self._next_seq)

    def _flush(self) -> None:
        if self._wfd < 0:
            self._wbuf.clear()  # the worker is gone: nobody will read it
            return
        try:
            while self._wbuf:
                del self._wbuf[: os.write(self._wfd, self._wbuf)]
        except BlockingIOError:
            pass
        except OSError:
            self._close_writer()
            return
        assert self._loop is not None
        if self._wbuf and not self._writing:
            self._writing = True
            self._loop.add_writer(self._wfd, self._flush)
        elif not self._wbuf and self._writing:
            self._writing = False
            self._loop.remove_writer(self._wfd)

    def _close_writer(self) -> None:
        fd, self._wfd = self._wfd, -1
        self._wbuf.clear()
        if fd >= 0:
            if self._writing and self._loop is not None:
                self._loop.remove_writer(fd)
            self._writing = False
            os.close(fd)

    # --- control ---------------------------------------------------------------------------------

    async def kill(self, sig: int) -> None:
        """Signal the worker's process group, as a local pool does."""
        if self.proc is None or self.done:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.proc.pid, sig)

    async def ping(self) -> int:
        return os.getpid()
