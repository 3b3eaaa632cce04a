"""The snakeden wire protocol, sans-IO: bytes in, frames out; frames in, bytes out.

This module does no I/O and imports no event loop. The host (``_channel``) and the Python worker
runtime (``worker``) both drive it, and ``docs/protocol.md`` is its specification for workers in
other languages.

A frame on the wire::

    +----------------+--------+--------+----------------+----------------------+
    | length: u32 BE | kind:u8| flags:u8| id: u32 BE    | body: length-6 bytes |
    +----------------+--------+--------+----------------+----------------------+

``length`` counts everything after itself (the 6 header bytes and the body), like Erlang's
``{packet, 4}`` plus a fixed header. It is checked against the maximum frame size *before* any of
the body is buffered, so a hostile or broken peer cannot make us allocate a huge buffer.
"""

from __future__ import annotations

import enum
import pickle
import struct
import threading
from typing import Any, Final, NamedTuple

import msgpack

PROTOCOL_VERSION: Final = 1

_PREFIX = struct.Struct(">I")
_HEADER = struct.Struct(">IBBI")  # length, kind, flags, id
HEADER_SIZE: Final = _HEADER.size  # 10 bytes: prefix + kind + flags + id
_INNER_HEADER: Final = HEADER_SIZE - _PREFIX.size  # 6 bytes counted by ``length``

#: Default largest frame (header + body) either side accepts: 256 MiB.
DEFAULT_MAX_FRAME_SIZE: Final = 256 * 1024 * 1024
MAX_REQUEST_ID: Final = 0xFFFF_FFFF


class Kind(enum.IntEnum):
    """What a frame is. Values are part of the wire format; never renumber."""

    HELLO = 1  # worker -> host, once: the worker is ready (body: a map, see docs/protocol.md)
    CALL = 2  # host -> worker: run a command (body: [command, args, kwargs(, context)])
    RESULT = 3  # worker -> host: the command returned (body: the value)
    ERROR = 4  # worker -> host: the command (or start-up, id 0) failed (body: error map)
    PING = 5  # host -> worker: are you alive? (body: empty)
    PONG = 6  # worker -> host: reply to PING, same id (body: map of worker facts)
    CANCEL = 7  # host -> worker: the caller of request ``id`` gave up (body: empty)
    SHUTDOWN = 8  # host -> worker: finish and exit 0 (body: empty)
    # Streams and host calls (docs/protocol.md sections 6.7-6.9); only with the HELLO features.
    STREAM_ITEM = 9  # worker -> host: the next item of a STREAM call (body: the item)
    CREDIT = 10  # host -> worker: the stream call ``id`` may send n more items (body: n)
    STREAM_END = 11  # worker -> host: the STREAM call ``id`` ended after its items (body: empty)
    HOST_CALL = 12  # worker -> host: run a host function (body: [call id, name, args, kwargs])
    HOST_REPLY = 13  # host -> worker: the answer to HOST_CALL ``id`` (body: [ok, value|error])
    # Sessions (docs/protocol.md section 6.6): ``id`` is the session's id, no reply. Sent only to
    # a worker whose HELLO lists the "session" feature.
    SESSION_OPEN = 14  # host -> worker: keep state for session ``id`` (body: empty)
    SESSION_CLOSE = 15  # host -> worker: drop session ``id``'s state (body: empty)


class Flag(enum.IntFlag):
    """Bits of the flags byte."""

    NONE = 0
    PICKLE = 0x01  # the body is a pickle (protocol 5), not MessagePack; Python peers only
    BY_REFERENCE = 0x02  # CALL only: the command is "module:qualname", imported by the worker
    BATCH = 0x04  # CALL: body is [command, [args...], kwargs]; RESULT: [[ok, value], ...]
    # CALL only: the body has a 4th element, a map of W3C Trace Context headers. Sent only to a
    # worker whose HELLO lists the "trace" feature (docs/protocol.md section 6.2).
    CONTEXT = 0x08
    # CALL only: the caller wants the command's items as a stream (STREAM_ITEM ... STREAM_END)
    # paced by CREDIT. Sent only to a worker whose HELLO lists the "stream" feature.
    STREAM = 0x10
    # CALL only: the call belongs to a session; the body starts with the session id (u32 BE),
    # followed by the usual body (docs/protocol.md section 6.6).
    SESSION = 0x20
    # BATCH with one positional argument per item (docs/protocol.md section 6.2.2). CALL: body
    # is [command, [arg, ...], kwargs]; RESULT: [value, ...], every item succeeded. Sent only
    # to a worker whose HELLO lists the "map_flat" feature.
    FLAT = 0x40
    # CALL only: answer by pipe, not through the shared-memory region (docs/protocol.md section
    # 6.10): the host sent the call while another of the worker's was unanswered, whose reply
    # may still be in the region.
    NO_REGION = 0x80


# Plain ints for the hot paths: IntFlag arithmetic costs ~0.7us per operation.
PICKLE: Final = int(Flag.PICKLE)
BY_REFERENCE: Final = int(Flag.BY_REFERENCE)
BATCH: Final = int(Flag.BATCH)
CONTEXT: Final = int(Flag.CONTEXT)
STREAM: Final = int(Flag.STREAM)
SESSION: Final = int(Flag.SESSION)

# Kinds for the per-call paths, as plain ints: on Python 3.11 a ``Kind.X`` lookup runs through
# EnumType.__getattr__'s slot, several times the cost of a global.
KIND_CALL: Final = int(Kind.CALL)
KIND_RESULT: Final = int(Kind.RESULT)
KIND_ERROR: Final = int(Kind.ERROR)
FLAT: Final = int(Flag.FLAT)
NO_REGION: Final = int(Flag.NO_REGION)

#: HELLO ``features`` value of a worker that accepts CONTEXT on its CALLs.
FEATURE_TRACE: Final = "trace"
#: HELLO ``features`` value of a worker that notes each call's id in the host's "begun" slot
#: before it runs it (a local worker sharing ``/dev/shm`` with its host; see ``_shm``).
FEATURE_BEGUN: Final = "begun"
#: HELLO ``features`` value of a worker that streams (STREAM flag, STREAM_ITEM/CREDIT/STREAM_END).
FEATURE_STREAM: Final = "stream"
#: HELLO ``features`` value of a worker whose running calls see CANCEL (not only queued ones).
FEATURE_CANCEL: Final = "cancel"
#: HELLO ``features`` value of a worker whose commands may call host functions (HOST_CALL).
FEATURE_HOST_CALL: Final = "host_call"
#: HELLO ``features`` value of a worker that keeps session state (SESSION_OPEN / SESSION_CLOSE,
#: and CALLs with the SESSION flag).
FEATURE_SESSION: Final = "session"
#: The session id that prefixes the body of a CALL with the SESSION flag.
SESSION_ID: Final = struct.Struct(">I")
#: HELLO ``features`` value of a worker that takes BATCH|FLAT calls (one argument per item).
FEATURE_FLAT: Final = "map_flat"
#: HELLO ``features`` value of a worker that mapped its shared-memory regions (see _regions).
FEATURE_REGIONS: Final = "shm_regions"


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid frame (internal; wrapped by the host).

    ``frames``: the whole frames the same :meth:`FrameDecoder.feed` completed before the bad
    bytes. They are valid; a reader delivers them before it drops the connection."""

    frames: list[Frame] = []


class FrameTooLarge(ProtocolViolation):
    """A frame's announced length exceeds the agreed maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"frame of {size} bytes exceeds the maximum frame size of {limit} bytes; "
            f"raise max_frame_size on both sides or send less data per call"
        )
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[type[FrameTooLarge], tuple[int, int]]:
        # args holds the message, not (size, limit); without this, unpickling raises TypeError.
        return (type(self), (self.size, self.limit))


class Frame(NamedTuple):
    """One decoded frame. ``body`` is still encoded; see :func:`decode_body`.

    A NamedTuple rather than a frozen dataclass: it is built once per call on both sides, and a
    frozen dataclass's ``__init__`` costs twice as much.
    """

    kind: int
    flags: int
    id: int
    body: bytes


class FrameDecoder:
    """Incremental frame parser: feed it bytes in any chunking, take complete frames out.

    Like h11's ``receive_data``/``next_event``: no I/O, no callbacks, so it can be driven by a
    blocking reader, an event loop, or a test feeding one byte at a time.
    """

    __slots__ = ("_buf", "_closed", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._closed = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data`` and return every frame it completed, in order.

        Raises :class:`FrameTooLarge` as soon as a length prefix over the limit is seen, and
        :class:`ProtocolViolation` for a frame too short to hold its header; either carries the
        frames completed before the bad bytes (``frames``). After an error the decoder is
        unusable: the stream has lost framing and the connection must be dropped.
        """
        if self._closed:
            raise ProtocolViolation("decoder is unusable after an earlier protocol violation")
        buf = self._buf
        if not buf and len(data) >= HEADER_SIZE:
            # The common case, one whole frame per read: parse it in place, no buffering.
            length, kind, flags, ident = _HEADER.unpack_from(data, 0)
            if length + _PREFIX.size == len(data) and length >= _INNER_HEADER:
                if len(data) > self.max_frame_size:
                    self._closed = True
                    raise FrameTooLarge(len(data), self.max_frame_size)
                return [Frame(kind, flags, ident, bytes(data[HEADER_SIZE:]))]
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= _PREFIX.size:
                (length,) = _PREFIX.unpack_from(buf, pos)
                if length + _PREFIX.size > self.max_frame_size:
                    raise FrameTooLarge(length + _PREFIX.size, self.max_frame_size)
                if length < _INNER_HEADER:
                    raise ProtocolViolation(
                        f"frame length {length} is shorter than the {_INNER_HEADER}-byte header; "
                        f"the peer is not speaking the snakeden protocol"
                    )
                stop = pos + _PREFIX.size + length
                if stop > end:
                    break
                _, kind, flags, ident = _HEADER.unpack_from(buf, pos)
                with memoryview(buf) as view:  # one copy, not slice-then-bytes
                    body = bytes(view[pos + HEADER_SIZE : stop])
                frames.append(Frame(kind, flags, ident, body))
                pos = stop
        except ProtocolViolation as exc:
            self._closed = True
            exc.frames = frames
            raise
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def pending_frame_size(self) -> int | None:
        """Total size of the partly received frame, if its prefix has arrived."""
        if len(self._buf) < _PREFIX.size:
            return None
        return int(_PREFIX.unpack_from(self._buf, 0)[0]) + _PREFIX.size


def encode_header(kind: int, ident: int, body_len: int, flags: int = 0) -> bytes:
    """The 10 header bytes for a frame whose body is ``body_len`` bytes long."""
    return _HEADER.pack(body_len + _INNER_HEADER, kind, flags, ident)


def session_call(call: bytes, session_id: int) -> bytes:
    """The encoded CALL frame ``call`` as a call of session ``session_id`` (docs/protocol.md
    section 6.6): the SESSION flag set and the session id put before the body."""
    _, kind, flags, ident = _HEADER.unpack_from(call)
    body = memoryview(call)[HEADER_SIZE:]
    header = encode_header(kind, ident, SESSION_ID.size + len(body), flags | SESSION)
    return b"".join((header, SESSION_ID.pack(session_id), body))


def encode_frame(
    kind: int,
    ident: int = 0,
    body: bytes = b"",
    flags: int = 0,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """A whole frame as one ``bytes`` (one copy of ``body``; fine below a few MiB)."""
    check_frame_size(len(body), max_frame_size)
    return encode_header(kind, ident, len(body), flags) + body


def check_frame_size(body_len: int, max_frame_size: int) -> None:
    """Raise :class:`FrameTooLarge` if a body of ``body_len`` bytes would not fit in a frame."""
    total = body_len + HEADER_SIZE
    if total > max_frame_size:
        raise FrameTooLarge(total, max_frame_size)


# --- payload codecs -----------------------------------------------------------------------------
# MessagePack is the default because every language has it. Pickle is an explicit opt-in for
# Python-only objects; it executes code on load, so only ever load pickles from our own workers.


#: MessagePack extension type of a tuple: the payload is the MessagePack array of its items, so a
#: tuple survives the round trip at any depth instead of arriving as a list. (42: _regions.)
EXT_TUPLE: Final = 43

_local = threading.local()
# tuple.__new__ skips ExtType.__new__'s argument checks, which cost 3x the tuple itself; code and
# data are ours and always valid.
_ext = tuple.__new__


def _packer() -> msgpack.Packer:
    # strict_types: only exact list is an array, so a tuple reaches _default (and becomes
    # EXT_TUPLE). The exact-type checks cost nothing in the common case; subclasses pay in
    # _default.
    return msgpack.Packer(use_bin_type=True, datetime=False, strict_types=True, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        # The Packer that called us is mid-pack and not reentrant, so the items go through a
        # spare one from a per-thread free list (a nested tuple takes another).
        try:
            spare = _local.spare
        except AttributeError:
            spare = _local.spare = []
        packer = spare.pop() if spare else _packer()
        try:
            data = packer.pack(list(obj))
        finally:
            spare.append(packer)
        return _ext(msgpack.ExtType, (EXT_TUPLE, data))
    # strict_types also stops msgpack from packing subclasses as their base type (an IntEnum as
    # an int, a defaultdict as a map); keep doing that. The base-class methods copy the value
    # without calling an override (str() of a ``str, Enum`` member is its name, not its value).
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, int):
        return int.__int__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, bytes | bytearray):
        return bytes(memoryview(obj))
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def _pack(obj: Any) -> bytes:
    # A Packer per thread: msgpack.packb builds a new one per call, which costs 3x as much,
    # and one shared Packer is not safe from several threads.
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = _packer()
    return packer.pack(obj)  # type: ignore[no-any-return]


def _hook_for(outer: Any) -> Any:
    """An ``ext_hook`` that turns EXT_TUPLE into a tuple and passes other codes to ``outer``."""

    def hook(code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(
                msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, ext_hook=hook)
            )
        if outer is not None:
            return outer(code, data)
        return msgpack.ExtType(code, data)

    return hook


_hooks: dict[Any, Any] = {None: _hook_for(None)}


def encode_body(obj: Any, flags: int = 0) -> bytes:
    """Serialise ``obj`` for a frame with ``flags`` (PICKLE selects pickle, else MessagePack)."""
    if flags & PICKLE:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _pack(obj)


def decode_body(frame: Frame, ext_hook: Any = None, buffers: Any = None) -> Any:
    """Deserialise a frame's body according to its flags. Empty bodies decode to ``None``.

    ``ext_hook`` handles MessagePack extension values other than tuples, ``buffers`` a pickle's
    out-of-band buffers (both: the shared-memory references of ``_regions``); this module itself
    never does I/O."""
    if not frame.body:
        return None
    if frame.flags & PICKLE:
        return pickle.loads(frame.body, buffers=buffers)
    hook = _hooks.get(ext_hook)
    if hook is None:
        hook = _hooks[ext_hook] = _hook_for(ext_hook)
    return msgpack.unpackb(
        frame.body, raw=False, strict_map_key=False, use_list=True, ext_hook=hook
    )


# --- message helpers shared by host and worker ----------------------------------------------------


def hello_body(
    *,
    pid: int,
    runtime: str,
    commands: list[str],
    worker_id: str,
    codecs: list[str],
    features: list[str] | None = None,
    concurrency: int = 1,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "runtime": runtime,
        "pid": pid,
        "commands": commands,
        "worker_id": worker_id,
        "codecs": codecs,
    }
    if features:  # left out when empty: the HELLO of a worker without them is unchanged
        body["features"] = features
    if concurrency != 1:  # calls the worker serves at once; missing means 1
        body["concurrency"] = concurrency
    return body


#: Error ``kind`` values in an ERROR body (see docs/protocol.md).
ERROR_KINDS: Final = frozenset(
    {"user", "unknown_command", "bad_call", "decode", "encode", "startup", "cancelled", "session"}
)


#: The ``message`` of the ERROR ``"cancelled"`` a worker answers for a call it skipped: one the
#: host asked it not to begin (docs/protocol.md section 6.10). A host that took the call back
#: but could not tell whether the worker had begun it knows by this that it had not.
SKIPPED: Final = "skipped: the host asked for it not to be begun"


class PickledException(bytes):
    """The ``pickled`` field of an ERROR body: the exception object, pickled on its own.

    Nested rather than the object itself, so an exception the host cannot unpickle costs only the
    exception's identity, not the whole reply. A type of its own, because only a pickled body can
    hold one: the host never unpickles a ``pickled`` that came in a MessagePack body.
    """

    __slots__ = ()


def error_body(
    *,
    kind: str,
    type_name: str,
    message: str,
    traceback: str = "",
    commands: list[str] | None = None,
    module: str | None = None,
    qualname: str | None = None,
    args: list[Any] | None = None,
    attrs: dict[str, Any] | None = None,
    pickled: PickledException | None = None,
) -> dict[str, Any]:
    """An ERROR body (docs/protocol.md section 7); optional fields are left out when ``None``."""
    body: dict[str, Any] = {
        "kind": kind,
        "type": type_name,
        "message": message,
        "traceback": traceback,
    }
    optional = {
        "commands": commands,
        "module": module,
        "qualname": qualname,
        "args": args,
        "attrs": attrs,
        "pickled": pickled,
    }
    body.update((k, v) for k, v in optional.items() if v is not None)
    return body
