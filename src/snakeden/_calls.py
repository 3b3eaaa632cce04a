"""Turning a call into a frame body and a reply frame into a result or an exception.

Pure functions shared by both fronts; no I/O, no pool state.
"""

from __future__ import annotations

import pickle as _pickle
from collections.abc import Callable
from typing import Any

from snakeden import _regions
from snakeden._commands import ByValue, reference_of
from snakeden._errors import (
    BadCall,
    PayloadTooLarge,
    ProtocolError,
    RemoteTraceback,
    SerializationError,
    SessionLost,
    SnakedenError,
    UnknownCommand,
    remote_error,
)
from snakeden._protocol import (
    BATCH,
    BY_REFERENCE,
    FLAT,
    HEADER_SIZE,
    KIND_ERROR,
    KIND_RESULT,
    PICKLE,
    Frame,
    PickledException,
    decode_body,
    encode_body,
)

# A keyword left out (``timeout``: the pool's ``call_timeout``), where None has its own meaning.
UNSET: Any = object()

Command = str | Callable[..., Any]


def command_name(cmd: Command) -> tuple[str, int]:
    """The wire name of a command and the flag bits it needs."""
    if type(cmd) is str:  # the common case first: ByValue is a str too
        return cmd, 0
    if isinstance(cmd, ByValue):
        # The callable itself is the call's first argument (see _commands.sendable). A plain
        # str: pickle would otherwise send the ByValue class along with the name.
        return str(cmd), BY_REFERENCE
    if isinstance(cmd, str):
        return cmd, 0
    if callable(cmd):
        return reference_of(cmd), BY_REFERENCE
    raise TypeError(f"a command is a name (str) or a module-level function, not {cmd!r}")


def encode_call(
    cmd: Command,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    *,
    pickle: bool,
    max_frame_size: int,
    batch: bool = False,
    flat: bool = False,
    shm: int | None = None,
) -> tuple[str, int, bytes]:
    """``(name, flags, body)`` for a CALL frame. Fails before anything is sent.

    ``flat`` (with ``batch``): ``args`` holds one positional argument per item (BATCH|FLAT).
    ``shm`` is a threshold: byte buffers that large go through the worker's shared-memory region
    (see _regions), and the body is then a :class:`RegionBody`."""
    name, flags = command_name(cmd)
    if batch:
        flags |= BATCH | (FLAT if flat else 0)
    if pickle:
        flags |= PICKLE
    body = None
    if shm is not None and not batch and not _regions.top_level_big(args, kwargs, shm):
        body = _encode(name, flags, args, kwargs)
        if len(body) < shm:
            shm = None  # nothing that large inside: the pipe, at no further cost
    if shm is not None and not batch:
        oob: list[memoryview] = []
        if pickle:
            body = _encode(name, flags, args, kwargs, shm=shm, oob=oob)
        else:
            split_args = _regions.split(args, shm, oob)
            split_kwargs = _regions.split(kwargs, shm, oob)
            if oob:  # else the body above is the one
                body = _encode(name, flags, split_args, split_kwargs)
        if oob and body is not None:
            body = _region_body(
                body,
                oob,
                cmd=cmd,
                args=args,
                kwargs=kwargs,
                pickle=pickle,
                max_frame_size=max_frame_size,
            )
    if body is None:
        body = _encode(name, flags, args, kwargs)
    if len(body) + HEADER_SIZE > max_frame_size:
        raise PayloadTooLarge(
            f"the call to {name!r} is {len(body) + HEADER_SIZE} bytes, over the maximum frame "
            f"size of {max_frame_size} bytes; send less per call or raise max_frame_size. "
            f"Nothing was sent"
        )
    return name, flags, body


def _encode(
    name: str,
    flags: int,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    *,
    shm: int | None = None,
    oob: list[memoryview] | None = None,
) -> bytes:
    """The body ``[name, args, kwargs]`` in the codec of ``flags``; with ``oob``, a pickle's
    out-of-band buffers of ``shm`` bytes or more go there."""
    # The argument list (each item's, for a batch) is the envelope, not a value: sent as a plain
    # array, a worker in any language reads it. Only tuples inside the arguments are EXT_TUPLE.
    if flags & PICKLE:
        pass
    elif flags & BATCH and not flags & FLAT:
        args = [a if type(a) is list else list(a) for a in args]
    elif type(args) is not list:
        args = list(args)
    try:
        if oob is not None and shm is not None:
            return _regions.pickle_split([name, args, kwargs], shm, oob)
        return encode_body([name, args, kwargs], flags & PICKLE)
    except Exception as exc:
        pickle = bool(flags & PICKLE)
        codec = "pickle" if pickle else "MessagePack"
        hint = (
            "pass plain data (None, bool, int, float, str, bytes, list, tuple, dict) "
            "or create the pool with serializer='pickle'"
            if not pickle
            else "make the arguments picklable"
        )
        raise SerializationError(
            f"the arguments of {name!r} cannot be serialised with {codec}: {exc}; {hint}. "
            f"Nothing was sent"
        ) from exc


def _region_body(
    body: bytes,
    oob: list[memoryview],
    *,
    cmd: Command,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    pickle: bool,
    max_frame_size: int,
) -> RegionBody:
    def by_pipe() -> bytes:
        return encode_call(cmd, args, kwargs, pickle=pickle, max_frame_size=max_frame_size)[2]

    out = RegionBody(body)
    out.buffers = oob
    out.by_pipe = by_pipe
    return out


class RegionBody(bytes):
    """A CALL body whose large buffers go through the worker's region: ``buffers`` to write
    there first; ``by_pipe()`` encodes the call whole, for a worker without a region."""

    buffers: list[memoryview]
    by_pipe: Callable[[], bytes]


def error_from_body(body: Any, name: str) -> Exception:
    """Map an ERROR frame's body to the exception the caller gets."""
    if not isinstance(body, dict):
        return ProtocolError(f"worker sent a malformed ERROR body for {name!r}: {body!r:.200}")
    kind = body.get("kind")
    type_name = str(body.get("type", "Exception"))
    message = str(body.get("message", ""))
    if kind == "unknown_command":
        detail = message if ":" in name else ""
        return UnknownCommand(name, body.get("commands") or (), detail)
    if kind == "bad_call":
        return BadCall(f"bad call to {name!r}: {message}")
    if kind in ("encode", "decode"):
        return SerializationError(message)
    if kind == "session":
        return SessionLost(
            f"the worker does not hold the session of this call to {name!r}: {message}"
        )
    tb = str(body.get("traceback", ""))
    pickled = body.get("pickled")
    # Only a PickledException, which a MessagePack body cannot hold: a pool that chose MessagePack
    # never unpickles, whatever its worker sends.
    if isinstance(pickled, PickledException):
        exc = _unpickle_exception(pickled, tb)
        if exc is not None:
            return exc
    args = body.get("args")
    attrs = body.get("attrs")
    return remote_error(
        type_name,
        message,
        tb,
        name,
        module=body.get("module"),
        qualname=body.get("qualname"),
        args=args if isinstance(args, list | tuple) else None,
        attrs=attrs if isinstance(attrs, dict) else None,
    )


def _unpickle_exception(data: bytes, tb: str) -> Exception | None:
    """The worker's own exception object, as ProcessPoolExecutor raises it; None to fall back."""
    try:
        exc = _pickle.loads(data)
    except Exception:  # e.g. a class not importable here, or an __init__ unpickling cannot call
        return None
    # A SystemExit or KeyboardInterrupt would end the caller's program, and snakeden's own errors
    # describe this pool (a remote ProtocolError would even get a healthy worker killed).
    if not isinstance(exc, Exception) or isinstance(exc, SnakedenError):
        return None
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def decode_reply(frame: Frame, name: str) -> Any:
    """The result of a RESULT frame; raises the mapped exception for an ERROR frame."""
    try:
        body = decode_body(
            frame, _regions.ext_hook, _regions.pickle_buffers() if frame.flags & PICKLE else None
        )
    except Exception as exc:
        raise ProtocolError(
            f"worker sent an undecodable reply to {name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if frame.kind == KIND_RESULT:
        return body
    if frame.kind == KIND_ERROR:
        raise error_from_body(body, name)
    raise ProtocolError(f"worker answered {name!r} with an unexpected frame kind {frame.kind}")


def unpack_batch(results: Any, name: str) -> list[Any]:
    """Results of a BATCH call, in order; the first failed item raises its exception."""
    if not isinstance(results, list):
        raise ProtocolError(f"worker sent a malformed batch reply for {name!r}")
    out = []
    for item in results:
        ok, value = item
        if not ok:
            raise error_from_body(value, name)
        out.append(value)
    return out
