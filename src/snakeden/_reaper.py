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
    moment this host dies (``_watcher.py``)."""

    def __init__(self, run_tag: str, directory: pathlib.Path | None = None) -> None:
        self.run_tag = run_tag
        self.directory = directory or runtime_dir()
        self.path = self.directory / f"{run_tag}.json"
        self.pids: set[int] = set()
        self.watcher: Watcher | None = None

    def watch(self) -> None:
        """Start the watcher (never fails: a watcher that cannot start only logs)."""
        self.watcher = Watcher.start(self.run_tag)

    def write(self) -> None:
        data = {
            "run_tag": self.run_tag,
            "host_pid": os.getpid(),
            "host_start": _start_time(os.getpid()),
            "pids": sorted(self.pids),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)
        except OSError as exc:  # a read-only or full disk must not stop the pool
            log.debug("cannot write run record %s: %s", self.path, exc)

    def add(self, pid: int) -> None:
        self.pids.add(pid)
        self.write()
        if self.watcher is not None:
            self.watcher.add(pid)

    def discard(self, pid: int) -> None:
        """Forget an exited process, so the record stays as small as the live pool."""
        if pid in self.pids:
            self.pids.discard(pid)
            self.write()
        if self.watcher is not None:
            self.watcher.discard(pid)

    def remove(self) -> None:
        """The run ended cleanly: no record for a reaper, and the watcher leaves, killing
        nothing."""
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
