"""What worker code sees of the call it is running: ``snakeden.context()``.

A command reaches its call's context through :func:`context` (a ``contextvars`` lookup, so it
is right in an ``async def`` command running beside others and in a thread the runtime runs a
sync command on). The context carries:

* ``call_id``: the protocol id of the call (unique among the calls in flight on this worker);
* ``cancelled`` / ``check_cancelled()``: whether the host has cancelled the call (its caller was
  cancelled or timed out), so a sync command can stop early (docs/protocol.md, CANCEL);
* ``call_host(name, ...)`` / ``acall_host(name, ...)``: call a function the host registered;
* ``session``: the state of the session the call belongs to, or ``None`` outside a session.

The worker runtime makes one :class:`CallContext` per call and sets it around the command.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import MutableMapping
from typing import Any

_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("snakeden_call")


class CallCancelled(Exception):
    """Raised by :meth:`CallContext.check_cancelled` in a call the host has cancelled.

    Nobody's fault: the caller stopped waiting (cancelled, or its timeout passed). Let it
    propagate; the host has already given the caller its own error and discards this call's.
    """


class CallContext:
    """One call's view of itself, inside the worker. Made by the worker runtime only."""

    __slots__ = ("_cancel", "_host", "call_id", "command", "session")

    def __init__(
        self,
        call_id: int,
        command: str,
        *,
        session: MutableMapping[str, Any] | None = None,
        host: Any = None,
    ) -> None:
        self.call_id = call_id
        self.command = command
        self.session = session
        self._cancel = threading.Event()
        self._host = host  # the runtime's host-call client (None: host calls not offered)

    def __repr__(self) -> str:
        state = "cancelled" if self._cancel.is_set() else "running"
        return f"<CallContext id={self.call_id} {self.command!r} {state}>"

    @property
    def cancelled(self) -> bool:
        """True once the host has cancelled this call."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`CallCancelled` if the host has cancelled this call; a sync command that
        runs long should call it between steps."""
        if self._cancel.is_set():
            raise CallCancelled(f"call {self.call_id} ({self.command!r}) was cancelled by the host")

    def mark_cancelled(self) -> None:
        """The runtime's side: the host sent CANCEL for this call."""
        self._cancel.set()


def context() -> CallContext:
    """The context of the call the current code runs in.

    Raises ``LookupError`` outside a call (at import time, in ``setup()``, in a thread the
    command started itself without copying its ``contextvars``).
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "snakeden.context() is only available inside a command running in a worker "
            "(threads a command starts need contextvars.copy_context() to see it)"
        ) from None


def enter(ctx: CallContext) -> contextvars.Token[CallContext]:
    return _current.set(ctx)


def leave(token: contextvars.Token[CallContext]) -> None:
    _current.reset(token)
