"""What worker code sees of the call it is running: ``snakeden.context()``.

A command reaches its call's context through :func:`context` (a ``contextvars`` lookup, so it
is right in an ``async def`` command running beside others and in a thread the runtime runs a
sync command on). The context carries:

* ``call_id``: the protocol id of the call (unique among the calls in flight on this worker);
* ``cancelled`` / ``check_cancelled()``: whether the host has cancelled the call (its caller was
  cancelled or timed out), so a sync command can stop early (docs/protocol.md, CANCEL);
* ``call_host(name, ...)`` / ``acall_host(name, ...)``: call a function the host registered;
* ``session``: the state of the session the call belongs to, or ``None`` outside a session.

The worker runtime makes one :class:`CallContext` per call and sets it around the command (for
a plain sync call on the single-call fast path, only when the command first asks for it).

Rules for host calls: ``call_host`` blocks the calling thread, so an ``async def`` command uses
``await acall_host(...)`` (``call_host`` on the worker's event loop raises ``RuntimeError``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("snakeden_call")


class CallCancelled(Exception):
    """Raised by :meth:`CallContext.check_cancelled` in a call the host has cancelled.

    Nobody's fault: the caller stopped waiting (cancelled, or its timeout passed). Let it
    propagate; the host has already given the caller its own error and discards this call's.
    """


class HostLink(Protocol):
    """What the worker runtime gives a context: the channel, seen from one call."""

    def poll(self, ctx: CallContext) -> None: ...

    def call_host(self, ctx: CallContext, name: str, args: Any, kwargs: Any) -> Any: ...

    async def acall_host(self, ctx: CallContext, name: str, args: Any, kwargs: Any) -> Any: ...


class CallContext:
    """One call's view of itself, inside the worker. Made by the worker runtime only."""

    __slots__ = ("_cancelled", "_flags", "_host", "call_id", "command", "session")

    def __init__(
        self,
        call_id: int,
        command: str,
        *,
        session: MutableMapping[str, Any] | None = None,
        host: HostLink | None = None,
        flags: int = 0,
    ) -> None:
        self.call_id = call_id
        self.command = command
        self.session = session
        # A plain flag: set by the thread reading the channel, read by the command's (one store
        # under the GIL); an Event would cost every call that makes a context.
        self._cancelled = False
        self._host = host  # the runtime's host-call client (None: host calls not offered)
        self._flags = flags  # the call's codec bit: host calls travel in the same codec

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "running"
        return f"<CallContext id={self.call_id} {self.command!r} {state}>"

    @property
    def cancelled(self) -> bool:
        """True once the host has cancelled this call."""
        if not self._cancelled and self._host is not None:
            self._host.poll(self)  # a single-threaded worker reads the channel only when asked
        return self._cancelled

    def check_cancelled(self) -> None:
        """Raise :class:`CallCancelled` if the host has cancelled this call; a sync command that
        runs long should call it between steps."""
        if self.cancelled:
            raise CallCancelled(f"call {self.call_id} ({self.command!r}) was cancelled by the host")

    def mark_cancelled(self) -> None:
        """The runtime's side: the host sent CANCEL for this call."""
        self._cancelled = True

    def call_host(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run the host function registered as ``name`` (``Pool(host_functions=...)``) with
        these arguments, in the host, and return its result; its exception is raised here
        (builtin types as themselves, e.g. ``KeyError``; others as ``RemoteError``). Blocks this
        thread: from an ``async def`` command use :meth:`acall_host`."""
        return self._link().call_host(self, name, list(args), kwargs)

    async def acall_host(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call_host` for ``async def`` commands: awaits the host's answer."""
        return await self._link().acall_host(self, name, list(args), kwargs)

    def _link(self) -> HostLink:
        if self._host is None:
            raise RuntimeError("this worker runtime offers no host calls")
        return self._host


def context() -> CallContext:
    """The context of the call the current code runs in.

    Raises ``LookupError`` outside a call (at import time, in ``setup()``, in a thread the
    command started itself without copying its ``contextvars``).
    """
    try:
        return _current.get()
    except LookupError:
        made = fallback() if fallback is not None else None
        if made is not None:
            return made
        raise LookupError(
            "snakeden.context() is only available inside a command running in a worker "
            "(threads a command starts need contextvars.copy_context() to see it)"
        ) from None


#: The single-call runtime's maker of the running call's context, on demand: the fast path sets
#: no context variable (it would cost every call), it only notes which call runs.
fallback: Callable[[], CallContext | None] | None = None


def enter(ctx: CallContext) -> contextvars.Token[CallContext]:
    return _current.set(ctx)


def leave(token: contextvars.Token[CallContext]) -> None:
    _current.reset(token)
