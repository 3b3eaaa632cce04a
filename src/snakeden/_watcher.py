"""A tiny process per pool that outlives its host and, when the host dies, kills what is left of
the run.

Workers and the fork template die with the host (parent-death signal), but what a worker started
(ffmpeg, a browser, a model server) would live on until a later pool's reaper finds it. The
watcher closes that gap to milliseconds::

    host                                         watcher (python -I -S -c SCRIPT, own session)
    ----                                         -------------------------------------------
    keeps the write end of a pipe         --->   blocks reading the read end (its stdin)
    "+<pid>\\n" / "-<pid>\\n"             --->   a worker (leading its own group) came / went
    clean close: "q\\n", close, reap      --->   exits, kills nothing
    host dies, any way (even SIGKILL)     --->   end-of-file: waits until the host is really
                                                 gone, kills the run, exits

The run is: every process whose environment carries ``SNAKEDEN_RUN_TAG=<tag>`` (inherited by
grandchildren), plus the process groups where the evidence says they belong to the run: a group
whose leader carries the tag, a worker group the host announced (start time checked, so a reused
pid is not mistaken for it), or a leaderless group in the host's session with a tagged member
(the worker died with the host; a grandchild that cleared its environment but stayed in the
group goes too). The host's own group is never signalled, nor anything without that evidence.

The watcher imports nothing but built-in modules, so it starts in milliseconds; it holds no
snakeden state, and its own environment has no run tag, so neither this watcher nor an outer
pool's watcher (a pool inside a worker) mistakes it for part of a run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import weakref

log = logging.getLogger("snakeden")

# The first line shows in `ps`. Kept free of imports beyond built-in modules (``select`` only once
# the host has died): start-up cost is one bare interpreter.
SCRIPT = r"""# snakeden watcher: kills the run's processes if its host dies
import os, sys, time

KILL, STOPPED = 9, "ZX"


def slurp(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        parts = []
        while True:
            part = os.read(fd, 65536)
            if not part:
                return b"".join(parts)
            parts.append(part)
    except OSError:
        return None
    finally:
        os.close(fd)


def stat(pid):
    data = slurp("/proc/%d/stat" % pid)
    if not data:
        return None
    # After the command name, which may itself hold ")" or spaces.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        # state, process group, session, start time, virtual memory size (0 once exiting)
        return rest[0].decode(), int(rest[2]), int(rest[3]), int(rest[19]), int(rest[20])
    except (IndexError, ValueError):
        return None


def host_gone(host, pidfd):
    # The pipe also ends if the host closed it by mistake (or exec'd): only act once it has
    # exited. We are its child, so until then our parent pid is the host's.
    if os.getppid() != host:
        return
    if pidfd >= 0:
        import select

        select.select([pidfd], [], [])
        return
    delay = 0.002
    while os.getppid() == host:
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def kill_round(marker, known, seen, host_pgid, host_sid, me, my_pgid):
    procs, tagged = {}, set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        # The environment first: one that reads empty because the process is exiting is then
        # matched by a stat that shows no memory.
        env = slurp("/proc/%d/environ" % pid)
        st = stat(pid)
        if st is None or st[0] in STOPPED:
            continue
        procs[pid] = st
        if env and marker in env.split(b"\0"):
            tagged.add(pid)
            seen.add(st[1])
    # A worker dying with the host (no memory left) counts as gone, not as an untagged leader.
    gone = {st[1] for st in procs.values() if st[1] not in procs or procs[st[1]][4] == 0}
    groups = set()
    for pid, start in list(known.items()):
        st = procs.get(pid)
        if st is None or (st[3] == start and st[1] == pid):
            groups.add(pid)
        else:
            del known[pid]  # the pid now belongs to someone else
    for g in seen:
        # Led by a tagged process, or once had a tagged member and lost its leader: a worker's
        # group whose members may have cleared their environment.
        if g in tagged or g in gone:
            groups.add(g)
    groups -= {0, 1, host_pgid, my_pgid}
    signalled = 0
    for g in groups:
        members = [st for st in procs.values() if st[1] == g]
        if not members:
            continue
        if g in gone and members[0][2] != host_sid:
            continue  # a worker's group is in the host's session; without a leader, check it
        try:
            os.killpg(g, KILL)
            signalled += len(members)
        except OSError:
            pass
    for pid in tagged:
        try:
            os.kill(pid, KILL)
            signalled += 1
        except OSError:
            pass
    return signalled


def main():
    tag, host, host_pgid, host_sid = sys.argv[1], *map(int, sys.argv[2:5])
    try:
        pidfd = os.pidfd_open(host)
    except (AttributeError, OSError):
        pidfd = -1
    if os.getppid() != host and pidfd >= 0:
        os.close(pidfd)  # it may name a new process that reused the pid
        pidfd = -1
    known = {}
    buf = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            break
        *lines, buf = (buf + chunk).split(b"\n")
        for line in lines:
            if line == b"q":
                return 0
            try:
                pid = int(line[1:])
            except ValueError:
                continue
            if line[:1] == b"+":
                # Read late (the host may already be dead): a worker gone by now leaves its
                # group without a leader, which is checked by session like any other.
                st = stat(pid)
                known[pid] = st[3] if st is not None else None
            elif line[:1] == b"-":
                known.pop(pid, None)
    if buf == b"q":
        return 0
    host_gone(host, pidfd)
    marker = b"SNAKEDEN_RUN_TAG=" + os.fsencode(tag)
    me, my_pgid = os.getpid(), os.getpgid(0)
    # Repeat: a process may fork before its turn comes. SIGKILLed processes cannot fork, so
    # this settles in a round or two; the bound keeps the watcher from lingering.
    deadline = time.monotonic() + 5.0
    delay, seen = 0.005, set()
    while kill_round(marker, known, seen, host_pgid, host_sid, me, my_pgid) and (
        time.monotonic() < deadline
    ):
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return 0


os._exit(main())  # nothing to flush or finalise: skip the interpreter's teardown
"""

_CLOSE_TIMEOUT = 5.0

# Watchers of this process: a child forked from the host (os.fork, multiprocessing's "fork")
# must not keep the pipe's write end open, or the watcher would never see the host die.
_live: weakref.WeakSet[Watcher] = weakref.WeakSet()


class Watcher:
    """The host's handle on its pool's watcher process. A disabled watcher does nothing."""

    def __init__(
        self, run_tag: str, proc: subprocess.Popen[bytes] | None = None, fd: int = -1
    ) -> None:
        self.run_tag = run_tag
        self._proc = proc
        self._fd = fd
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Watcher pid={self.pid} run={self.run_tag!r}>"

    @classmethod
    def start(cls, run_tag: str) -> Watcher:
        """Start a watcher for ``run_tag``. Never raises: on failure, warns and returns a
        disabled watcher (the pool then relies on the next pool's reaper, as before)."""
        if not sys.platform.startswith("linux"):
            return cls(run_tag)  # the watcher reads /proc
        if not sys.executable:
            log.warning("no run watcher: sys.executable is unknown (embedded interpreter?)")
            return cls(run_tag)
        # Neither this watcher nor an outer pool's (we may be a worker) must take it for a
        # process of a run.
        env = {k: v for k, v in os.environ.items() if k != "SNAKEDEN_RUN_TAG"}
        argv = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            SCRIPT,
            run_tag,
            str(os.getpid()),
            str(os.getpgid(0)),
            str(os.getsid(0)),
        ]
        try:
            read_fd, write_fd = os.pipe()  # both close-on-exec: no worker inherits them
        except OSError as exc:
            log.warning("no run watcher: cannot make a pipe: %s", exc)
            return cls(run_tag)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd="/",  # hold no mount busy
                start_new_session=True,  # no terminal signals, not in any group we kill
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            os.close(write_fd)
            log.warning(
                "no run watcher: cannot start %s: %s; what workers start may outlive a crashed "
                "host until the next pool starts",
                sys.executable,
                exc,
            )
            return cls(run_tag)
        finally:
            os.close(read_fd)
        # A watcher that stops reading must never block the host: drop messages instead.
        os.set_blocking(write_fd, False)
        watcher = cls(run_tag, proc, write_fd)
        _live.add(watcher)
        return watcher

    @property
    def pid(self) -> int | None:
        """The watcher's pid (None when disabled)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def enabled(self) -> bool:
        return self._fd >= 0

    def add(self, pid: int) -> None:
        """Tell the watcher about a worker (or template) that leads its own process group, so
        the group dies with the host even when nothing left in it carries the tag."""
        self._send(b"+%d\n" % pid)

    def discard(self, pid: int) -> None:
        """The worker is gone (its pid may be reused): forget its group."""
        self._send(b"-%d\n" % pid)

    def _send(self, msg: bytes) -> None:
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.write(self._fd, msg)  # shorter than PIPE_BUF: all or nothing
            except BlockingIOError:
                log.debug("run watcher %s is not reading; dropped %r", self.pid, msg)
            except OSError as exc:
                log.warning(
                    "run watcher %s is gone (%s); what workers start may outlive a crashed host",
                    self.pid,
                    exc,
                )
                self._close_fd()

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Clean stop: the watcher exits without killing anything, and is reaped."""
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._fd, b"q\n")
                self._close_fd()
            proc, self._proc = self._proc, None
        _live.discard(self)
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("run watcher %s did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _abandon_in_child(self) -> None:
        # In a forked child: the watcher belongs to the parent. Another thread may have held
        # the lock when we forked, so take a fresh one rather than waiting on it forever.
        self._lock = threading.Lock()
        self._close_fd()
        self._proc = None


def _after_fork_in_child() -> None:
    for watcher in list(_live):
        watcher._abandon_in_child()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
