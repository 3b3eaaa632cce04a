"""Large buffers through persistent shared memory: two regions per worker, reused by every call.

A local Python worker and its host share two files in ``/dev/shm``, one per direction, each
mapped by both sides for the worker's whole life (the host creates them before the launch and
unlinks them once the HELLO says the worker mapped them, as for the "begun" slot, so nothing is
left behind whatever happens to either process). A message whose arguments or result hold large
byte buffers (``shm_threshold`` bytes or more, at the top level or nested in lists, tuples and
dicts) writes those buffers into its direction's region, in one copy each, and the frame carries
a small reference in their place (MessagePack extension 42: the buffer's index); with the pickle
serializer, objects that pickle their data out of band (protocol 5: numpy arrays, ``PickleBuffer``)
do the same. The receiver copies each buffer out once: ``bytes`` for MessagePack (what the pipe
would have given), a writable ``bytearray`` under numpy's arrays for pickle. Nothing the
receiver holds points into the region, so reusing it for the next call cannot change a value
anyone kept, and the pages, once touched, stay mapped: no page faults after the first call.

A region holds one message at a time: a call the host sends while another of the worker's is
unanswered (pipelining) goes by pipe and carries ``NO_REGION``, so the worker answers it by pipe
too; only a call sent to a worker with nothing else in flight uses the regions. Batches (a map's
chunks, several in flight) always go by pipe; workers serving several calls at once have none.
A writer grows its region as needed (``ftruncate``); the reader maps the larger file when a
message reaches past its mapping.

Message layout in a region: ``u32 count``, then ``count`` x ``u64 size``, then the buffers, each
at a 64-byte aligned offset, in index order.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pathlib
import pickle
import struct
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import msgpack

from snakeden._protocol import PICKLE, Frame, decode_body, encode_body
from snakeden._shm import worker_file

#: Every encoding of a MessagePack extension value holds its type byte, so a body without this
#: byte (``EXT_REGION in body``: one memchr) holds no region reference, and its decode need not
#: know the region. (An int, not ``b"*"``: ``bytes in bytes`` first fails to read it as an int,
#: which costs more than the search.)
EXT_REGION = 42
ALIGN = 64
_COUNT = struct.Struct("<I")
#: Containers larger than this are not searched for buffers (their items go by pipe): the
#: search must cost nothing next to the call it is made for.
MAX_SCAN_ITEMS = 256
#: A region larger than this shrinks when a message uses less than a quarter of it.
SHRINK_ABOVE = 16 * 1024 * 1024
#: Environment variable with the threshold, set by a host that created the worker's regions.
ENV = "SNAKEDEN_SHM_REGIONS"  # a new name: workers of older versions must not see it


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


DIRS = ("in", "out")


def region_path(run_tag: str, worker_id: str, direction: str) -> str:
    """``direction``: ``"in"`` (host to worker) or ``"out"`` (worker to host)."""
    return worker_file(run_tag, worker_id, direction)


class Region:
    """One direction's shared file, mapped; written by one side, read by the other."""

    def __init__(self, fd: int, *, close_with_it: bool = True) -> None:
        self.fd = fd
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self.mapped = 0
        if close_with_it:
            # The fd goes with the last reference (a dead worker's handle): nothing to close by
            # hand.
            weakref.finalize(self, _close_fd, fd)

    @classmethod
    def open(cls, path: pathlib.Path | str, *, create: bool) -> Region | None:
        """The region at ``path`` (made empty by its creator); None if it cannot be had."""
        try:
            flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
            return cls(os.open(path, flags, 0o600))
        except OSError:
            return None

    def _remap(self, size: int) -> None:
        self._release()
        if size:
            self._map = mmap.mmap(self.fd, size)
            self._view = memoryview(self._map)
        self.mapped = size

    def _release(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still out: the GC closes it
                self._map.close()
            self._map = None

    def put(self, buffers: list[memoryview]) -> None:
        """Write one message's buffers (raises OSError when /dev/shm is full)."""
        sizes = [b.nbytes for b in buffers]
        header = _COUNT.pack(len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes)
        offset = _aligned(len(header))
        total = offset + sum(_aligned(n) for n in sizes)
        if total > self.mapped or (self.mapped > SHRINK_ABOVE and 4 * total < self.mapped):
            # Grow (doubling), or give back most of a large region a small message leaves
            # unused: the reader only touches a message's extent, never past the file's end.
            size = max(total, 2 * self.mapped) if total > self.mapped else 2 * total
            size = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
            os.ftruncate(self.fd, size)
            self._remap(size)
        view = self._view
        assert view is not None
        view[: len(header)] = header
        for buf, n in zip(buffers, sizes, strict=True):
            view[offset : offset + n] = buf.cast("B") if buf.format != "B" else buf
            offset += _aligned(n)

    def take(self) -> list[memoryview]:
        """Views of the current message's buffers (the caller copies them out at once)."""
        if self.mapped < ALIGN:
            self._remap(os.fstat(self.fd).st_size)
        view = self._view
        assert view is not None
        (count,) = _COUNT.unpack_from(view, 0)
        sizes = struct.unpack_from(f"<{count}Q", view, _COUNT.size)
        offset = _aligned(_COUNT.size + 8 * count)
        end = offset + sum(_aligned(n) for n in sizes)
        if end > self.mapped:
            self._remap(os.fstat(self.fd).st_size)
            view = self._view
            assert view is not None
        out = []
        for n in sizes:
            out.append(view[offset : offset + n])
            offset += _aligned(n)
        return out


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# --- taking big buffers out of a message (sender) -------------------------------------------


def _big(value: Any, threshold: int) -> bool:
    t = type(value)
    return (t is bytes or t is bytearray or t is memoryview) and len(value) >= threshold


def split(value: Any, threshold: int, out: list[memoryview]) -> Any:
    """``value`` with each large byte buffer (nested in lists, tuples and dicts of at most
    MAX_SCAN_ITEMS items) replaced by a reference, the buffers appended to ``out``."""
    t = type(value)
    if t is bytes or t is bytearray or t is memoryview:
        if len(value) < threshold:
            return value
        out.append(memoryview(value))
        return msgpack.ExtType(EXT_REGION, msgpack.packb(len(out) - 1))
    if (t is list or t is tuple) and len(value) <= MAX_SCAN_ITEMS:
        found = len(out)
        items = [split(v, threshold, out) for v in value]
        if len(out) == found:
            return value
        return items if t is list else tuple(items)
    if t is dict and len(value) <= MAX_SCAN_ITEMS:
        found = len(out)
        entries = {k: split(v, threshold, out) for k, v in value.items()}
        return value if len(out) == found else entries
    return value


def has_big(value: Any, threshold: int) -> bool:
    """Whether :func:`split` would take anything out. On every call's path: plain loops, no
    generator, exact type tests first."""
    t = type(value)
    if t is bytes or t is bytearray or t is memoryview:
        return len(value) >= threshold
    if t is tuple or t is list:
        if len(value) > MAX_SCAN_ITEMS:
            return False
        for v in value:
            tv = type(v)
            if tv is bytes or tv is str or tv is int or tv is float or v is None:
                if tv is bytes and len(v) >= threshold:
                    return True
            elif has_big(v, threshold):
                return True
        return False
    if t is dict:
        if len(value) > MAX_SCAN_ITEMS:
            return False
        for v in value.values():
            if has_big(v, threshold):
                return True
    return False


_PLAIN = frozenset({bool, int, float, str, type(None)})


def top_level_big(args: Any, kwargs: dict[str, Any], threshold: int) -> bool:
    """A quick look at a call's arguments, before encoding: one of them is a byte buffer (or
    has ``nbytes``, as numpy arrays do) of ``threshold`` bytes or more."""
    for a in (*args, *kwargs.values()) if kwargs else args:
        t = type(a)
        if t is bytes or t is bytearray:
            if len(a) >= threshold:
                return True
        elif t not in _PLAIN:
            size = getattr(a, "nbytes", 0)
            if type(size) is int and size >= threshold:
                return True
    return False


def pickle_split(obj: Any, threshold: int, out: list[memoryview]) -> bytes:
    """Pickle ``obj`` (protocol 5) with out-of-band buffers of ``threshold`` bytes or more
    appended to ``out`` instead of copied into the pickle."""

    def callback(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < threshold:
            return True  # in band
        out.append(view)
        return False

    return pickle.dumps(obj, protocol=5, buffer_callback=callback)


# --- putting them back (receiver) -----------------------------------------------------------

_current = threading.local()


def ext_hook(code: int, data: bytes) -> Any:
    """MessagePack ``ext_hook`` for a body whose region is :func:`reading`'s."""
    if code != EXT_REGION:
        return msgpack.ExtType(code, data)
    views = getattr(_current, "views", None)
    if views is None:
        region = getattr(_current, "region", None)
        if region is None:
            raise ValueError("a shared-memory reference where no region is shared")
        views = _current.views = region.take()
    return bytes(views[msgpack.unpackb(data)])


def pickle_buffers() -> Iterator[bytearray]:
    """The out-of-band buffers of a pickled body whose region is :func:`reading`'s, copied."""
    region = getattr(_current, "region", None)
    if region is None:
        raise ValueError("out-of-band pickle buffers where no region is shared")
    for view in region.take():
        yield bytearray(view)


def reading(region: Region | None) -> None:
    """Decode the next message of this thread with ``region`` as the source of its references
    (called before each decode: two attribute stores)."""
    _current.region = region
    _current.views = None


class WorkerSide:
    """A worker's end of its two regions: decodes calls from ``region_in``, answers large
    results through ``region_out``."""

    def __init__(self, threshold: int, region_in: Region, region_out: Region) -> None:
        self.threshold = threshold
        self.region_in = region_in
        self.region_out = region_out
        # The current message's buffers, taken on its first reference. Per instance, not
        # per thread as ext_hook's: only a worker that runs one call at a time has regions, so
        # one thread decodes, and each call's decode then costs one attribute store.
        self._views: list[memoryview] | None = None
        self._hook = self._ext_hook  # one bound method: decode_body caches a hook per object

    @classmethod
    def open(cls, run_tag: str, worker_id: str) -> WorkerSide | None:
        """This worker's regions, if its host created them (and both can be opened)."""
        threshold = os.environ.get(ENV)
        if not threshold or not run_tag or not worker_id:
            return None
        fds: list[int] = []
        try:
            for direction in DIRS:
                fds.append(os.open(region_path(run_tag, worker_id, direction), os.O_RDWR))
        except OSError:
            for fd in fds:
                _close_fd(fd)
            return None
        # Mapped for the worker's whole life, so no finalizer: on a forked worker's way to its
        # HELLO, weakref.finalize's first use costs page faults (copy-on-write) for nothing.
        region_in, region_out = (Region(fd, close_with_it=False) for fd in fds)
        return cls(int(threshold), region_in, region_out)

    def decode(self, frame: Frame) -> Any:
        if frame.flags & PICKLE:
            reading(self.region_in)
            return decode_body(frame, ext_hook, pickle_buffers())
        self._views = None
        return decode_body(frame, self._hook)

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code != EXT_REGION:
            return msgpack.ExtType(code, data)
        views = self._views
        if views is None:
            views = self._views = self.region_in.take()
        return bytes(views[msgpack.unpackb(data)])

    def encode(self, result: Any, flags: int) -> bytes:
        """A single call's RESULT body, its large buffers written to ``region_out``."""
        if not top_level_big((result,), {}, self.threshold):
            data = encode_body(result, flags)
            if len(data) < self.threshold:
                return data  # nothing that large inside: the common case costs one comparison
        oob: list[memoryview] = []
        if flags & PICKLE:
            data = pickle_split(result, self.threshold, oob)
        else:
            data = encode_body(split(result, self.threshold, oob), flags)
        if oob:
            self.region_out.put(oob)
        return data
