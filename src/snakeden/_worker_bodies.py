"""What a worker checks in a CALL body and what it puts in an ERROR body: pure functions, no I/O.

Kept apart from the runtime loop (``worker.py``) because the fuzz tests and the size limits of
ERROR frames depend on them, not on how frames are read.
"""

from __future__ import annotations

import asyncio
import pickle
import traceback
from typing import Any

from snakeden._errors import RemoteError
from snakeden._protocol import (
    BATCH,
    FLAT,
    PICKLE,
    Frame,
    PickledException,
    encode_body,
    error_body,
)
from snakeden._worker_context import CallCancelled


class BadCall(Exception):
    """A call whose arguments do not fit its command's signature: the caller's mistake."""


def _shape_problem(frame: Frame, body: Any) -> str | None:
    """Why a decoded CALL body is not ``[command, args, kwargs]``; None if it is."""
    # Every call pays for this check: exact type() tests on what the host sends come first.
    if type(body) is list and len(body) == 3:
        name, args, kwargs = body
        if type(name) is str and type(args) is list and type(kwargs) is dict:
            for key in kwargs:
                if type(key) is not str:
                    break
            else:
                return _batch_problem(args) if frame.flags & (BATCH | FLAT) == BATCH else None
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        what = "an empty body" if not frame.body else _describe(body)
        return f"a CALL body must be a [command, args, kwargs] array, got {what}"
    name, args, kwargs = body
    if not isinstance(name, str):
        return f"the command of a CALL must be a string, got {_describe(name)}"
    if not isinstance(args, (list, tuple)):
        return f"the args of a CALL must be an array, got {_describe(args)}"
    if not isinstance(kwargs, dict):
        return f"the kwargs of a CALL must be a map, got {_describe(kwargs)}"
    for key in kwargs:
        if not isinstance(key, str):
            return f"the kwargs of a CALL must have string keys, got {_describe(key)}"
    return _batch_problem(args) if frame.flags & (BATCH | FLAT) == BATCH else None


def _batch_problem(batch: list[Any] | tuple[Any, ...]) -> str | None:
    for args in batch:
        if not isinstance(args, (list, tuple)):
            return f"the args of a BATCH call must be arrays, one per call, got {_describe(args)}"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _text(obj: Any) -> str:
    """``str(obj)`` for an ERROR body: never raises, and always encodable (no surrogates)."""
    try:
        text = str(obj)
    except Exception:
        text = f"<{type(obj).__name__} object: str() failed>"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes of ``text`` (plus a note of what was cut)."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") + f"... [{len(data) - limit} more bytes]"


def _clip_head(text: str, limit: int) -> str:
    """Like :func:`_clip`, keeping the end (a traceback's end says most)."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    return f"[{len(data) - limit} bytes cut]...\n" + data[-limit:].decode("utf-8", "ignore")


def _fits(value: Any, limit: int) -> bool:
    """Whether ``value`` is plain MessagePack data of at most ``limit`` bytes.

    Plain data even in a pickle pool: the host must be able to decode the ERROR body whatever
    it can import, so objects only ever travel inside ``pickled``."""
    try:
        return len(encode_body(value)) <= limit
    except Exception:
        return False


def _constructor_args(exc: BaseException) -> list[Any]:
    """The arguments unpickling would rebuild ``exc`` with: ``args``, but OSError adds its
    filename, for instance."""
    try:
        reduced = exc.__reduce__()
        if reduced[0] is type(exc) and isinstance(reduced[1], tuple):
            return list(reduced[1])
    except Exception:  # a user __reduce__ that fails or returns a string
        pass
    return list(exc.args)


def _pickled(exc: BaseException, limit: int) -> PickledException | None:
    if not isinstance(exc, Exception):
        return None  # the host never raises a SystemExit or KeyboardInterrupt as itself
    try:
        data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:  # unpicklable: the host falls back to module, qualname and args
        return None
    return PickledException(data) if len(data) <= limit else None


def exception_body(exc: BaseException, flags: int, max_frame_size: int) -> dict[str, Any]:
    """The ERROR body for ``exc`` raised by a call, sized to fit one frame."""
    # Cut what could make the ERROR frame itself too large: the host would then kill a
    # healthy worker instead of reporting the exception. Counted in bytes, as the frame is:
    # message and traceback get a quarter of the frame each; args, attrs and the pickle an
    # eighth each, or are left out.
    budget = max(256, max_frame_size // 4)
    message = _clip(_text(exc), budget)
    if isinstance(exc, BadCall):
        return error_body(kind="bad_call", type_name="TypeError", message=message)
    if isinstance(exc, asyncio.CancelledError | CallCancelled):
        return error_body(kind="cancelled", type_name=type(exc).__name__, message=message)
    if isinstance(exc, SystemExit):
        message = f"exit code {exc.code!r}"
    tb = _clip_head(_text("".join(traceback.format_exception(exc))), budget)
    cls = type(exc)
    if issubclass(cls, RemoteError) and len(cls.__bases__) == 2:
        cls = cls.__bases__[1]  # a host function's error, passed on: report its own class
    small = budget // 2
    args = _constructor_args(exc)
    state = getattr(exc, "__dict__", None) or {}
    attrs = {k: v for k, v in state.items() if isinstance(k, str) and _fits(v, small)}
    return error_body(
        kind="user",
        type_name=cls.__qualname__,
        message=message,
        traceback=tb,
        module=cls.__module__,
        qualname=cls.__qualname__,
        args=args if _fits(args, small) else None,
        attrs=attrs if attrs and _fits(attrs, small) else None,
        pickled=_pickled(exc, small) if flags & PICKLE else None,
    )
