"""Sessions, worker side: the state each open session keeps in this worker.

The host opens a session on a worker with SESSION_OPEN, names it on each of its CALLs (the
SESSION flag: the body starts with the session id), and drops it with SESSION_CLOSE when the
session is closed or expires (docs/protocol.md section 6.6). A command reaches its session's
state as ``snakeden.context().session``: a dict that lives as long as the session, with the
session's ``id``. Nothing else keeps it: when the worker exits (with its host, or recycled), the
state goes with it, and the host tells the session's caller so (``SessionLost``).

A CALL naming a session this worker does not hold is answered with ERROR kind ``"session"``,
never run with empty state: a call that expects state must not silently find none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snakeden import _worker_context
from snakeden._protocol import SESSION, SESSION_ID, Frame, Kind

if TYPE_CHECKING:
    from snakeden._worker_context import CallContext


class SessionState(dict[str, Any]):
    """One session's state in this worker: a plain dict (put anything in it), and its ``id``."""

    __slots__ = ("id",)

    def __init__(self, session_id: int) -> None:
        super().__init__()
        self.id = session_id

    def __repr__(self) -> str:
        return f"<SessionState id={self.id} {dict.__repr__(self)}>"


# The sessions this worker holds, by id. Module state: the runtime serves one channel, and a
# fork template never opens a session, so a forked worker starts with none.
_open: dict[int, SessionState] = {}


def open_ids() -> list[int]:
    """The ids of the sessions this worker holds (for tests and diagnostics)."""
    return sorted(_open)


def on_frame(frame: Frame) -> None:
    """SESSION_OPEN or SESSION_CLOSE. Opening an open session keeps its state; closing an
    unknown one is nothing (it may have been dropped already)."""
    if frame.kind == Kind.SESSION_OPEN:
        if frame.id not in _open:
            _open[frame.id] = SessionState(frame.id)
    else:
        _open.pop(frame.id, None)


def run_call(
    frame: Frame,
    handle_call: Callable[[Frame, CallContext], None],
    send_error: Callable[..., None],
) -> None:
    """A CALL with the SESSION flag: take the session id off the body and run the rest as an
    ordinary call, with the session's state in its context."""
    if len(frame.body) < SESSION_ID.size:
        send_error(
            frame.id,
            0,
            kind="decode",
            type_name="ValueError",
            message=f"a CALL with the SESSION flag must start with a 4-byte session id, "
            f"got {len(frame.body)} bytes",
        )
        return
    (session_id,) = SESSION_ID.unpack_from(frame.body)
    state = _open.get(session_id)
    if state is None:
        send_error(
            frame.id,
            0,
            kind="session",
            type_name="SessionLost",
            message=f"session {session_id} is not open in this worker (never opened here, "
            f"or closed); its state is not here",
        )
        return
    call = Frame(frame.kind, frame.flags & ~SESSION, frame.id, frame.body[SESSION_ID.size :])
    ctx = _worker_context.CallContext(frame.id, "", session=state)
    token = _worker_context.enter(ctx)
    try:
        handle_call(call, ctx)
    finally:
        _worker_context.leave(token)
