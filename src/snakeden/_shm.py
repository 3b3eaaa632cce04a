"""Zero-copy transfer of large byte buffers through shared memory (opt-in: ``shm_threshold``).

A bytes-like argument or result at least ``shm_threshold`` bytes long does not travel through
the pipe. The sender writes it once into a fresh file in ``/dev/shm`` (tmpfs) and sends a small
MessagePack extension value naming it; the receiver maps the file and unlinks it at once, and
gets a read-only ``memoryview`` of the mapping: no copy on the receiving side, and the pages are
freed when the last view is gone. Compared with the pipe, that saves the kernel's two copies and
the framing copies on each side.

Only top-level positional and keyword arguments and a top-level result are considered, and only
with the MessagePack serializer. A receiver that dies before it maps the file leaves it behind;
pools remove their own leftovers at close and the leftovers of dead hosts at start.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pathlib
import uuid
from typing import Any

import msgpack

EXT_SHM = 42  # MessagePack extension type code: [path, size]
SHM_DIR = pathlib.Path("/dev/shm")


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _prefix(run_tag: str) -> str:
    return f"snakeden-{run_tag}-"


def export(data: bytes | bytearray | memoryview, run_tag: str) -> msgpack.ExtType:
    """Write ``data`` into a new shared-memory file; the value to put in its place."""
    path = SHM_DIR / f"{_prefix(run_tag)}{uuid.uuid4().hex}"
    view = memoryview(data).cast("B")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return msgpack.ExtType(EXT_SHM, msgpack.packb([str(path), len(data)]))


def ext_hook(code: int, payload: bytes) -> Any:
    """MessagePack ``ext_hook``: map a shared-memory value; other codes stay ExtType."""
    if code != EXT_SHM:
        return msgpack.ExtType(code, payload)
    path, size = msgpack.unpackb(payload)
    if not str(path).startswith(str(SHM_DIR) + "/snakeden-"):
        raise ValueError(f"refusing shared-memory path outside {SHM_DIR}: {path!r}")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        if size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
    finally:
        os.close(fd)


def _big(value: Any, threshold: int) -> bool:
    return isinstance(value, bytes | bytearray | memoryview) and len(value) >= threshold


def export_args(
    args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], threshold: int, run_tag: str
) -> tuple[list[Any] | tuple[Any, ...], dict[str, Any]]:
    """Replace large top-level byte buffers by shared-memory references."""
    if any(_big(a, threshold) for a in args):
        args = [export(a, run_tag) if _big(a, threshold) else a for a in args]
    if any(_big(v, threshold) for v in kwargs.values()):
        kwargs = {k: export(v, run_tag) if _big(v, threshold) else v for k, v in kwargs.items()}
    return args, kwargs


def export_result(value: Any, threshold: int | None, run_tag: str) -> Any:
    if threshold is not None and _big(value, threshold):
        return export(value, run_tag)
    return value


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


def begun_path(run_tag: str, worker_id: str) -> pathlib.Path:
    return SHM_DIR / f"{_prefix(run_tag)}{worker_id}.begun"


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
