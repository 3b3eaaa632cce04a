"""Finding and reaping what a crashed host left behind.

Workers die with their host (parent-death signal, end-of-file on the channel, the template's own
death), but what a worker started in turn can outlive a host killed with SIGKILL. Every process a
pool starts carries the pool's run tag: in its command line (``--snakeden-run=TAG``) and in its
environment (``SNAKEDEN_RUN_TAG``, inherited by grandchildren). Each running pool keeps a small
record in the runtime directory; a pool starting later reads the records whose host is gone and
kills the processes that still carry that tag. A pid is only ever killed after its command line
or environment shows the tag, so a pid reused by an unrelated process is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import tempfile
import threading
from typing import Any

import psutil

from snakeden import _shm
from snakeden._watcher import Watcher

log = logging.getLogger("snakeden")


def runtime_dir() -> pathlib.Path:
    """``$SNAKEDEN_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/snakeden``, else a per-user temp dir."""
    explicit = os.environ.get("SNAKEDEN_RUNTIME_DIR")
    if explicit:
        return pathlib.Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return pathlib.Path(xdg, "snakeden")
    return pathlib.Path(tempfile.gettempdir(), f"snakeden-{os.getuid()}")


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


class RunRecord:
    """This pool's record: host pid and start time, run tag, and the pids it started.

    Two keepers share it: the file a later pool reads if this host dies (``reap_leftovers``),
    and, once :meth:`watch` has started it, the run's watcher process, which acts at the very
    moment this host dies (``_watcher.py``).

    The watcher hears of each pid at once. The file is written at once only while it does not
    exist yet (the pool's start); after that a thread of the record's own rewrites it, a moment
    (``SETTLE``) after a change, so that the changes of one event (a crashed worker's exit and
    its replacement's start) make one write, once the replacement serves (on a loaded machine
    too: the write's Python part holds the GIL the pool's threads want). A rewrite (write, then
    rename over the old file) takes milliseconds on a disk file system, which the loop spent
    before starting a replacement when it wrote the file itself. A reaper that reads a file
    some pids behind loses nothing: it also kills every process carrying the run tag.
    """

    #: Seconds between a change and the rewrite that shows it.
    SETTLE = 0.5

    def __init__(self, run_tag: str, directory: pathlib.Path | None = None) -> None:
        self.run_tag = run_tag
        self.directory = directory or runtime_dir()
        self.path = self.directory / f"{run_tag}.json"
        self.pids: set[int] = set()  # changed under _state only (the writer reads it)
        self.watcher: Watcher | None = None
        self._state = threading.Condition()  # guards pids and the counts below
        self._changes = 0  # changes of pids so far
        self._taken = 0  # ... that the last write started from
        self._shown = 0  # ... that the file shows (or that a failed write tried to)
        self._written = False  # the file exists: later changes go through the writer
        self._closed = False
        self._writer: threading.Thread | None = None
        self._io = threading.Lock()  # one rewrite at a time, each newer than the last
        self._host: tuple[int, float | None] = (0, None)  # (pid, start time), once per process

    def watch(self) -> None:
        """Start the watcher (never fails: a watcher that cannot start only logs)."""
        self.watcher = Watcher.start(self.run_tag)

    def write(self) -> None:
        """Write the file now, with the pids known at this moment."""
        with self._io:
            with self._state:
                if self._closed:
                    return
                self._written = True
                taken = self._taken = self._changes
                pids = sorted(self.pids)
            pid, started = self._host
            if pid != os.getpid():
                pid = os.getpid()
                started = _start_time(pid)
                self._host = (pid, started)
            data = {"run_tag": self.run_tag, "host_pid": pid, "host_start": started, "pids": pids}
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data))
                tmp.replace(self.path)
            except OSError as exc:  # a read-only or full disk must not stop the pool
                log.debug("cannot write run record %s: %s", self.path, exc)
            with self._state:
                self._shown = taken
                self._state.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the file shows every change made so far (or the record is removed);
        False if ``timeout`` passed first."""
        with self._state:
            target = self._changes
            return self._state.wait_for(lambda: self._shown >= target or self._closed, timeout)

    def add(self, pid: int) -> None:
        with self._state:
            self.pids.add(pid)
        self._changed()
        if self.watcher is not None:
            self.watcher.add(pid)

    def discard(self, pid: int) -> None:
        """Forget an exited process, so the record stays as small as the live pool."""
        with self._state:
            known = pid in self.pids
            self.pids.discard(pid)
        if known:
            self._changed()
        if self.watcher is not None:
            self.watcher.discard(pid)

    def _changed(self) -> None:
        with self._state:
            if self._closed:
                return
            self._changes += 1
            if not self._written:
                writer = None
            elif self._writer is not None:
                self._state.notify_all()
                return
            else:
                writer = self._writer = threading.Thread(
                    target=self._keep, name="snakeden-run-record", daemon=True
                )
        if writer is None:
            self.write()
        else:
            writer.start()  # once per record; it finds the change waiting

    def _keep(self) -> None:
        """The writer thread: rewrite the file a moment after each change, until removed."""
        while True:
            with self._state:
                while self._taken == self._changes and not self._closed:
                    self._state.wait()
                # wait_for, not a sleep: remove() does not wait the moment out.
                if self._state.wait_for(lambda: self._closed, self.SETTLE):
                    return  # the file is about to go: nothing more to write
            self.write()

    def remove(self) -> None:
        """The run ended cleanly: no record for a reaper, and the watcher leaves, killing
        nothing."""
        with self._state:
            self._closed = True
            self._state.notify_all()
            writer = self._writer
        if writer is not None and writer.ident is not None:
            writer.join()  # a rewrite in progress must not bring the file back
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None


def _carries_tag(proc: psutil.Process, tag: str) -> bool:
    marker = f"--snakeden-run={tag}"
    try:
        if marker in proc.cmdline():
            return True
        return bool(proc.environ().get("SNAKEDEN_RUN_TAG") == tag)
    except psutil.Error:
        return False


def _host_alive(data: dict[str, Any]) -> bool:
    pid = data.get("host_pid")
    if not isinstance(pid, int):
        return False
    started = _start_time(pid)
    if started is None:
        return False
    recorded = data.get("host_start")
    # The same pid with a different start time is a new process: the old host is gone.
    return recorded is None or abs(started - float(recorded)) < 1.0


def reap_leftovers(directory: pathlib.Path | None = None) -> list[int]:
    """Kill what earlier, dead hosts left behind; return the pids killed."""
    directory = directory or runtime_dir()
    try:
        records = sorted(directory.glob("*.json"))
    except OSError:
        return []
    killed: list[int] = []
    dead_tags: list[str] = []
    for path in records:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _host_alive(data):
            continue
        tag = str(data.get("run_tag", ""))
        if not tag:
            continue
        dead_tags.append(tag)
        _shm.remove_leftovers(tag)
        for pid in data.get("pids", []):
            with contextlib.suppress(psutil.Error, ValueError):
                proc = psutil.Process(int(pid))
                if _carries_tag(proc, tag):
                    killed.extend(_kill_tree(proc))
        with contextlib.suppress(OSError):
            path.unlink()
    if dead_tags:
        # Grandchildren are in no record but inherit the tag in their environment.
        for proc in psutil.process_iter():
            for tag in dead_tags:
                if proc.pid not in killed and _carries_tag(proc, tag):
                    killed.extend(_kill_tree(proc))
    if killed:
        log.warning("reaped %d process(es) left behind by a crashed snakeden host", len(killed))
    return killed


def _kill_tree(proc: psutil.Process) -> list[int]:
    pids = [proc.pid]
    with contextlib.suppress(psutil.Error):
        pids += [c.pid for c in proc.children(recursive=True)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids
