"""A real worker process on real pipes, driven byte by byte from a test.

No pool and no event loop in between: the test decides exactly which bytes the worker reads and
in which pieces, and sees exactly the frames it writes back. Every wait is a ``poll()`` on the
reply pipe or the worker's pidfd with a deadline, so a hung worker fails the test instead of
hanging it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import termios
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from snakeden._process import LaunchSpec, make_pipes, worker_env
from snakeden._protocol import Frame, FrameDecoder, Kind, decode_body, encode_body, encode_frame

#: Generous: the machine running the tests may be a loaded 2-core box. Normal waits take ms.
WAIT = 30.0
RUN_TAG = f"{os.getpid()}-fuzz"  # conftest's leftover check finds our workers by this prefix


class WorkerGone(Exception):
    """The worker exited (or closed its pipe) before answering."""


class Worker:
    """One ``python -m snakeden.worker <target>`` with the host ends of its channel."""

    def __init__(
        self, target: str, *, max_frame_size: int, env: dict[str, str] | None = None
    ) -> None:
        self.max_frame_size = max_frame_size
        host_r, worker_w, worker_r, host_w = make_pipes()
        spec = LaunchSpec(
            worker_id="fuzz",
            target=target,
            env=env or {},
            run_tag=RUN_TAG,
            max_frame_size=max_frame_size,
        )
        # A file, not a pipe: nobody has to drain it for the worker to make progress.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close(), like the fds
        # Linux carries the parent's peak RSS across fork and exec into the child's: a worker's
        # own peak shows only where it rises above this.
        self.inherited_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snakeden.worker", target, f"--snakeden-run={RUN_TAG}"],
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                pass_fds=(worker_r, worker_w),
                env=worker_env(spec, worker_r, worker_w, os.getpid()),
                process_group=0,
            )
        finally:
            os.close(worker_r)
            os.close(worker_w)
        self.pid = self.proc.pid
        self.rfd: int | None = host_r
        self.wfd: int | None = host_w
        # Non-blocking both ways: a worker that stops reading must not block our write while
        # it waits for us to read its replies (both pipes full = deadlock, not a test failure).
        os.set_blocking(host_r, False)
        os.set_blocking(host_w, False)
        self.pidfd = os.pidfd_open(self.pid)
        self.decoder = FrameDecoder(max_frame_size)  # a worker's over-size frame raises here
        self.inbox: deque[Frame] = deque()
        self.returncode: int | None = None
        self.maxrss_kib = 0
        hello = self.next_frame()
        if hello is None or hello.kind != Kind.HELLO:
            output = self.output()
            self.close()
            raise AssertionError(f"worker did not say HELLO: {hello!r}\n{output}")
        self.hello: dict[str, Any] = decode_body(hello)

    def own_peak_below(self, kib: int) -> bool:
        """Whether the worker's own peak RSS stayed under ``kib`` (a bound above what it
        inherited, which is all its wait4 peak shows when it used less)."""
        return self.maxrss_kib < max(kib, self.inherited_maxrss_kib + 16 * 1024)

    # --- reading ------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Read whatever the worker has written so far (never blocks)."""
        while self.rfd is not None:
            try:
                data = os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                return
            if not data:
                os.close(self.rfd)
                self.rfd = None
                return
            self.inbox.extend(self.decoder.feed(data))

    def _wait(self, deadline: float, *, writing: bool = False) -> list[tuple[int, int]]:
        """One poll() for: a reply to read, the worker's exit, and (optionally) room to write."""
        fds = [(self.pidfd, select.POLLIN)]
        if self.rfd is not None:
            fds.append((self.rfd, select.POLLIN))
        if writing and self.wfd is not None:
            fds.append((self.wfd, select.POLLOUT))
        poller = select.poll()
        for fd, mask in fds:
            poller.register(fd, mask)
        timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
        events = poller.poll(timeout_ms)
        self._drain()
        return events

    @property
    def exited(self) -> bool:
        if self.returncode is not None:
            return True
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def next_frame(self, timeout: float = WAIT) -> Frame | None:
        """The next frame from the worker; None once it has closed its end and sent nothing."""
        deadline = time.monotonic() + timeout
        self._drain()
        while not self.inbox:
            if self.rfd is None:
                return None
            if time.monotonic() > deadline:
                raise AssertionError(f"worker sent nothing for {timeout} s\n{self.output()}")
            self._wait(deadline)
        return self.inbox.popleft()

    def reply(self, timeout: float = WAIT) -> Frame:
        frame = self.next_frame(timeout)
        if frame is None:
            raise WorkerGone(f"worker exited with {self.wait_exit()}\n{self.output()}")
        return frame

    # --- writing ------------------------------------------------------------------------------

    def send(self, chunks: Iterable[bytes], *, settle: bool = True) -> bool:
        """Write ``chunks`` one after the other; False if the worker stopped reading first.

        With ``settle``, each chunk is read by the worker before the next is written, so a
        split frame really arrives in pieces instead of being merged again in the pipe.
        """
        for chunk in chunks:
            if not self._write(chunk):
                return False
            if settle and not self._settle():
                return False
        return True

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        deadline = time.monotonic() + WAIT
        while view:
            if self.wfd is None or self.exited:
                return False
            try:
                view = view[os.write(self.wfd, view) :]
                continue
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"worker stopped reading for {WAIT} s\n{self.output()}")
            self._wait(deadline, writing=True)
        return True

    def unread(self) -> int:
        """Bytes written to the worker that it has not read yet."""
        assert self.wfd is not None
        return int.from_bytes(fcntl.ioctl(self.wfd, termios.FIONREAD, b"\0" * 4), sys.byteorder)

    def _settle(self) -> bool:
        deadline = time.monotonic() + WAIT
        while self.unread():
            if self.exited:
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"worker stopped reading for {WAIT} s\n{self.output()}")
            # Nothing signals "the pipe is empty again", so re-check every millisecond; the
            # poll still wakes at once for a reply or the worker's exit.
            self._wait(min(deadline, time.monotonic() + 0.001))
        return True

    def call(self, ident: int, name: str, *args: Any, flags: int = 0, **kwargs: Any) -> Frame:
        """Send one well-formed CALL and return the reply to it."""
        body = encode_body([name, list(args), kwargs], flags)
        assert self.send([encode_frame(Kind.CALL, ident, body, flags)], settle=False)
        return self.reply()

    def close_input(self) -> None:
        """EOF on the worker's read end."""
        if self.wfd is not None:
            os.close(self.wfd)
            self.wfd = None

    # --- ending -------------------------------------------------------------------------------

    def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit code, waiting for it; also records the worker's peak RSS."""
        if self.returncode is None:
            deadline = time.monotonic() + timeout
            while not self.exited:
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker did not exit within {timeout} s")
                self._wait(deadline)
            # wait4, not Popen.wait: its rusage holds the worker's lifetime peak RSS.
            _, status, usage = os.wait4(self.pid, 0)
            self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.maxrss_kib = usage.ru_maxrss
            self._drain()
        return self.returncode

    def output(self) -> str:
        """What the worker wrote to stdout and stderr so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.wait_exit()

    def close(self) -> None:
        self.kill()
        self.close_input()
        if self.rfd is not None:
            os.close(self.rfd)
            self.rfd = None
        os.close(self.pidfd)
        self.log.close()


class WorkerSupply:
    """Hands out a live worker, starting a new one only when the last has exited: starting an
    interpreter costs far more than a Hypothesis example, so examples share workers."""

    def __init__(self, target: str, *, max_frame_size: int) -> None:
        self.target = target
        self.max_frame_size = max_frame_size
        self.worker: Worker | None = None
        self.started = 0

    def get(self) -> Worker:
        if self.worker is not None and (self.worker.exited or self.worker.wfd is None):
            self.discard()
        if self.worker is None:
            self.worker = Worker(self.target, max_frame_size=self.max_frame_size)
            self.started += 1
        return self.worker

    def discard(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def __enter__(self) -> WorkerSupply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


@contextlib.contextmanager
def running_worker(
    target: str, *, max_frame_size: int, env: dict[str, str] | None = None
) -> Iterator[Worker]:
    w = Worker(target, max_frame_size=max_frame_size, env=env)
    try:
        yield w
    finally:
        w.close()
