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
# four-byte slot it shares with the host; after a death the host knows exactly which call was
# begun, and sends the others to another worker.


def worker_file(run_tag: str, worker_id: str, suffix: str) -> str:
    """The path of one of a worker's files: ``begun`` here, ``in`` and ``out`` in _regions."""
    return f"{_SHM}/{_prefix(run_tag)}{worker_id}.{suffix}"


def begun_path(run_tag: str, worker_id: str) -> str:
    return worker_file(run_tag, worker_id, "begun")


def map_slot(path: pathlib.Path | str, *, create: bool) -> memoryview | None:
    """A four-byte shared slot, as one unsigned int; None where shared memory is unavailable."""
    try:
        fd = os.open(path, (os.O_RDWR | os.O_CREAT | os.O_EXCL) if create else os.O_RDWR, 0o600)
    except OSError:
        return None
    try:
        if create:
            os.ftruncate(fd, 4)
        return memoryview(mmap.mmap(fd, 4)).cast("I")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
