"""``/dev/shm`` files a pool shares with its local workers: the "begun" slot here, the call
regions in :mod:`snakeden._regions`. Each is created by the host before the worker starts and
unlinked once the worker has it open; a run's files left by a host that died first are removed
by the next pool (``remove_leftovers``).

Their paths are plain strings, not ``pathlib`` objects: a forked worker opens them on its way to
the HELLO, where every page it touches for the first time is a copy-on-write fault (a
``pathlib`` path cost it some 35 of them, about 0.15 ms).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pathlib
import threading

_SHM = "/dev/shm"
SHM_DIR = pathlib.Path(_SHM)


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _prefix(run_tag: str) -> str:
    return f"snakeden-{run_tag}-"


def remove_leftovers(run_tag: str) -> int:
    """Unlink files of ``run_tag`` nobody mapped (a receiver died first). Returns the count."""
    removed = 0
    with contextlib.suppress(OSError):
        for path in SHM_DIR.glob(f"{_prefix(run_tag)}*"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


# --- the "begun" slot: which call a worker last began ------------------------------------------
#
# A worker killed while idle can still take a call's bytes from the pipe in its last instant: the
# kernel finishes a read that was pending when SIGKILL arrived. So "the worker read it" does not
# mean "the worker ran it". Before it runs a call, a Python worker stores the call's id in a
# slot it shares with the host; after a death the host knows exactly which call was begun, and
# sends the others to another worker.
#
# The same mapping carries the other way the ids of calls whose callers were cancelled before
# the worker began them (pipelining: calls wait in the worker's pipe behind the one it runs):
# word 1 counts the cancels noted, words 2.. are a ring of their ids; a worker that finds the
# id of the call it is about to begin there skips it (answers ERROR "cancelled") instead. The
# host also notes there a call it takes back from behind a long one, to run it on a worker that
# came free (``Channel.take_back``); ``fence`` says why both sides need a barrier for that.

SLOT_WORDS = 64
SKIP_RING = SLOT_WORDS - 2


def worker_file(run_tag: str, worker_id: str, suffix: str) -> str:
    """The path of one of a worker's files: ``begun`` here, ``in`` and ``out`` in _regions."""
    return f"{_SHM}/{_prefix(run_tag)}{worker_id}.{suffix}"


def begun_path(run_tag: str, worker_id: str) -> str:
    return worker_file(run_tag, worker_id, "begun")


def map_slot(path: pathlib.Path | str, *, create: bool) -> memoryview | None:
    """The shared slot, as unsigned ints (the creator's size: an older host's has one word
    only); None where shared memory is unavailable."""
    try:
        fd = os.open(path, (os.O_RDWR | os.O_CREAT | os.O_EXCL) if create else os.O_RDWR, 0o600)
    except OSError:
        return None
    try:
        if create:
            os.ftruncate(fd, 4 * SLOT_WORDS)
        size = os.fstat(fd).st_size
        return memoryview(mmap.mmap(fd, size - size % 4)).cast("I")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier between this side's store to the slot and its next load.

    Taking a call back (``Channel.take_back``) is Dekker's handshake: the worker stores the id
    it begins, then loads the skip ring; the host stores the skip, then loads the begun id. Each
    side's store must be visible before its own load, or both could miss the other's and the call
    would run twice. Python has no fence of its own; a lock has one: acquiring CPython's lock is
    a compare-and-swap (glibc's ``sem_trywait``), releasing it an atomic add, and on x86 each of
    those is a full barrier. Twice round, so that a release is followed by an acquire: that
    pair also orders a store before a later load on weaker memory models (aarch64)."""
    with _FENCE:
        pass
    with _FENCE:
        pass


def note_skip(slot: memoryview, ident: int) -> None:
    """Host: ask the worker to skip call ``ident`` if it has not begun it (see above)."""
    if len(slot) < SLOT_WORDS:
        return
    n = slot[1]
    slot[2 + n % SKIP_RING] = ident
    slot[1] = (n + 1) & 0xFFFF_FFFF  # after the id: a worker that sees the count sees the id


class Skips:
    """Worker: the ids the host asked it to skip, as last read from the slot."""

    __slots__ = ("count", "ids")

    def __init__(self) -> None:
        self.count = 0  # the slot's count of ids noted, when last read
        self.ids: set[int] = set()

    def take(self, slot: memoryview, ident: int) -> bool:
        """Whether to skip call ``ident``, about to begin (then it is forgotten)."""
        if self.count != slot[1]:
            self.count = slot[1]
            self.ids = set(slot[2:SLOT_WORDS]) - {0}
        if ident in self.ids:
            self.ids.discard(ident)
            return True
        # Ids at or before this one were cancelled once begun: they are done with.
        self.ids = {i for i in self.ids if 0 < (i - ident) % (1 << 32) < 1 << 31}
        return False
