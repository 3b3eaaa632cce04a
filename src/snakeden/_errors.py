"""The exception hierarchy. Every class says whose fault it is, so callers know what to fix.

All of them derive from :class:`SnakedenError`. Per-call failures derive from :class:`CallError`;
failures of the pool as a whole from :class:`PoolError`. Timeouts also derive from the built-in
:class:`TimeoutError` so generic timeout handling keeps working. ``asyncio.CancelledError`` is never
wrapped in any of these: cancelling a caller always raises the caller's own cancellation.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any


class SnakedenError(Exception):
    """Base class of every error snakeden raises."""


# --- per call ----------------------------------------------------------------------------------


class CallError(SnakedenError):
    """One call failed. Other calls, queued or running elsewhere, are not affected."""


class RemoteTraceback(Exception):
    """The worker-side traceback text, chained as ``__cause__`` of a :class:`RemoteError`."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class RemoteError(CallError):
    """**The command's code raised.** Your code's fault (or its input's), not the pool's.

    ``type_name`` is the remote exception's class name, ``remote_message`` its message and
    ``remote_traceback`` the worker-side traceback, which is also chained as ``__cause__``.
    The worker survives and keeps serving.

    With the MessagePack serializer, when the remote class is an ``Exception`` subclass already
    imported on the host, the exception raised is also an instance of that class (see
    :func:`remote_error`), so ``except ZeroDivisionError`` works as with a local call. With
    ``serializer="pickle"`` the caller gets the original exception object instead, which is not a
    ``RemoteError``.
    """

    # (module, qualname, args, attrs) of the remote exception, for pickling (see __reduce__).
    _origin: tuple[Any, ...] = (None, None, None, None)

    def __init__(self, type_name: str, message: str, remote_traceback: str, command: str) -> None:
        what = f"{type_name}: {message}" if message else type_name
        super().__init__(f"{what} (raised by command {command!r} in the worker)")
        self._set_remote(type_name, message, remote_traceback, command)

    def _set_remote(
        self, type_name: str, message: str, remote_traceback: str, command: str
    ) -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback
        self.command = command
        if remote_traceback:
            self.__cause__ = RemoteTraceback(remote_traceback)

    def __reduce__(self) -> tuple[Any, ...]:
        # args holds the formatted message (or the remote args), not what remote_error() takes:
        # without this, unpickling raises TypeError (and a ProcessPoolExecutor that runs a
        # SyncPool call in its own worker breaks).
        state = {k: v for k, v in self.__dict__.items() if k != "_origin"}
        fields = (self.type_name, self.remote_message, self.remote_traceback, self.command)
        return (_rebuild, (fields, self._origin), state)


def remote_error(
    type_name: str,
    message: str,
    remote_traceback: str,
    command: str,
    *,
    module: str | None = None,
    qualname: str | None = None,
    args: Sequence[Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> RemoteError:
    """The exception for a command that raised an instance of ``module.qualname`` in the worker.

    If that class is an ``Exception`` subclass (but no snakeden error, whose meaning is about a
    pool) found in a module the host has already imported, the result is an instance of
    ``_Remote_<name>(RemoteError, <class>)``, built as unpickling builds an exception: the
    class's own ``__new__`` and ``__init__`` called with ``args`` (its constructor arguments; so
    ``OSError.errno`` and the like are set), then the instance attributes ``attrs`` set. If the
    constructor refuses ``args`` (a custom signature), the instance is made without calling
    ``__init__`` and ``args`` become its ``args``. Its ``str()`` is the remote ``str()``.
    Otherwise, or if the two classes cannot be combined (incompatible C layouts), it is a plain
    :class:`RemoteError`.

    Only modules already in ``sys.modules`` are searched: importing a module the worker names
    would run its top-level code in the host, just to pick an exception type.
    """
    base = _host_class(module, qualname)
    combined = _combined_class(base) if base is not None else None
    exc = None
    if combined is not None and base is not None:
        exc = _construct(combined, base, args, message)
    if exc is None:
        exc = RemoteError(type_name, message, remote_traceback, command)
    else:
        for key, value in (attrs or {}).items():
            with contextlib.suppress(Exception):  # a read-only property: keep the class's value
                setattr(exc, key, value)
        exc._set_remote(type_name, message, remote_traceback, command)  # after attrs: ours win
    if module is not None:
        exc._origin = (module, qualname, args, attrs)
    return exc


def _rebuild(fields: tuple[str, str, str, str], origin: tuple[Any, ...]) -> RemoteError:
    module, qualname, args, attrs = origin
    return remote_error(*fields, module=module, qualname=qualname, args=args, attrs=attrs)


def _host_class(module: str | None, qualname: str | None) -> type[Exception] | None:
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):  # "<locals>" is never found: such a class is not importable
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, SnakedenError):
        return obj
    return None


_combined: dict[type, type[RemoteError] | None] = {}
_combined_lock = threading.Lock()


def _combined_str(self: RemoteError) -> str:
    # The remote str(): the class's own __str__ would format args that may not be the
    # constructor's (KeyError quotes its key; a no-__init__ instance may have none).
    message = self.__dict__.get("remote_message")
    return BaseException.__str__(self) if message is None else str(message)


def _combined_class(base: type[Exception]) -> type[RemoteError] | None:
    """``_Remote_<name>(RemoteError, base)``, one per class, so ``type(a) is type(b)`` holds."""
    with _combined_lock:
        if base in _combined:
            return _combined[base]
        name = f"_Remote_{base.__name__}"
        namespace = {"__module__": __name__, "__qualname__": name, "__str__": _combined_str}
        try:
            cls: type[RemoteError] | None = type(name, (RemoteError, base), namespace)
        except Exception:  # TypeError: layout or metaclass conflict; or base's __init_subclass__
            cls = None
        _combined[base] = cls
        return cls


def _construct(
    cls: type[RemoteError], base: type[Exception], args: Sequence[Any] | None, message: str
) -> RemoteError | None:
    if args is not None:
        try:
            exc = base.__new__(cls, *args)
            base.__init__(exc, *args)
        except Exception:  # a constructor whose signature is not its args: see below
            pass
        else:
            # A __new__ that returns something else: no instance of ours to build on.
            return exc if isinstance(exc, cls) else None
    try:
        # base.__new__, not BaseException.__new__, which refuses C layouts such as OSError's.
        exc = base.__new__(cls)
    except Exception:
        return None
    if not isinstance(exc, cls):
        return None
    exc.args = tuple(args) if args is not None else (message,)
    return exc


class UnknownCommand(CallError):
    """**The caller named a command the worker does not serve.** The caller's fault.

    ``available`` lists what the worker serves; check the spelling or the worker module.
    """

    def __init__(self, command: str, available: Sequence[str], detail: str = "") -> None:
        served = ", ".join(sorted(available)) or (
            "(none: the worker module defines no commands, or the pool has no module)"
        )
        if detail:
            text = f"{detail}. Is the module importable in the worker (same venv, same sys.path)?"
        else:
            text = (
                f"unknown command {command!r}; the worker serves: {served}. Register it with "
                f"@snakeden.command, or pass a module-level function to call it by reference"
            )
        super().__init__(text)
        self.command = command
        self.available = tuple(available)


class BadCall(CallError):
    """**The call does not fit the command** (wrong arguments). The caller's fault."""


class SerializationError(CallError):
    """**A value could not be serialised.** The caller's data (arguments) or the command's result.

    When it is an argument, the call fails before anything is sent; nothing reaches a worker.
    """


class PayloadTooLarge(SerializationError):
    """**A call or result is larger than the maximum frame size.** Send less or raise the limit."""


class WorkerCrashed(CallError):
    """**The worker process died while running this call.** The worker's fault (a native crash,
    ``os._exit``, the OOM killer, someone's SIGKILL), possibly triggered by the call.

    ``exitcode`` is the process's exit code (negative: killed by signal ``-exitcode``),
    ``signal_name`` the signal's name if any, and ``stderr_tail`` the worker's last stderr lines.
    The pool has already started a replacement.
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        stderr_tail: Sequence[str] = (),
        worker_id: str = "",
        pid: int | None = None,
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.signal_name = signal_name(exitcode)
        self.stderr_tail = tuple(stderr_tail)
        self.worker_id = worker_id
        self.pid = pid


class WorkerLost(WorkerCrashed):
    """**The worker was lost with the machine it ran on** (a Ray node died or left the cluster,
    or the Ray actor owning the worker was killed from outside). Nobody's code is at fault: the
    infrastructure failed. The call may or may not have run; ``node`` names the lost node.
    ``exitcode`` is None (nobody saw the process exit). The pool has already started a
    replacement on the nodes that remain.
    """

    def __init__(self, message: str, *, node: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.node = node


class ProtocolError(WorkerCrashed):
    """**The worker broke the protocol** (garbage or oversized frames). The worker's fault: a bug
    in a non-Python worker, or native code writing to the channel's file descriptors. The worker
    was killed and replaced."""


class CallTimeout(CallError, TimeoutError):
    """**The call ran longer than its timeout.** The command was too slow or hung (often in C code).

    The worker running it was killed (its whole process group) and is being replaced.
    """


class NotAReference(CallError, TypeError, ValueError):
    """**The function cannot be sent to a worker** (a lambda, a nested function, a bound method or
    ``functools.partial`` with MessagePack, ...). The caller's fault; nothing was sent.

    Workers import functions by name, so a function must be defined at module level in an
    importable module; bound methods, partials and callable objects travel with
    ``serializer="pickle"``. Also a ``TypeError`` (the wrong kind of callable) and, as before it
    existed, a ``ValueError``.
    """


# --- the pool ----------------------------------------------------------------------------------


class PoolError(SnakedenError):
    """The pool could not take or run the call. Nothing was sent to a worker."""


class PoolClosed(PoolError, RuntimeError):
    """**The pool is closed or closing.** The caller's fault: the call came after ``close()``.

    Also a ``RuntimeError``, as ``concurrent.futures`` raises after ``shutdown()``."""


class PoolSaturated(PoolError):
    """**The wait queue is full** (``max_queue`` callers already waiting). The pool's limits:
    slow down, add workers, or raise ``max_queue``."""


class FeatureNotSupported(CallError):
    """**The worker cannot do what the call needs** (a stream from a worker whose HELLO does not
    list ``"stream"``, e.g. the Node.js runtime). Your choice of worker: call it with
    ``pool.call()``, or use a worker runtime that lists the feature (docs/protocol.md §6.1)."""


class HostCallDeadlock(PoolSaturated):
    """**A host function called the pool and no worker slot was free.** Your design: the call
    would wait for a slot that the call behind this host function may itself be holding, so it
    is refused at once instead of hanging. Give the pool more workers (or a worker module more
    ``snakeden.concurrency()``), or call the pool outside host functions."""


class QueueTimeout(PoolError, TimeoutError):
    """**No worker became free within the queue timeout.** The pool's limits: all workers stayed
    busy. The call was never sent and never will be."""


class PoolBroken(PoolError):
    """**The pool's workers keep failing to start**, so the pool stopped trying. The worker code's
    or the environment's fault; ``__cause__`` holds the last start failure."""


class WorkerStartError(PoolError):
    """**A worker could not start**: its module failed to import, its set-up raised, its interpreter
    is missing, or it did not say hello in time. The worker code's or the environment's fault.

    ``failures`` maps worker id to the cause (the worker's own traceback where there is one).
    """

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})


# --- sessions ------------------------------------------------------------------------------------


class SessionError(PoolError):
    """A call of a session could not be run; see the subclass for whose fault. Nothing was sent."""


class SessionLost(SessionError):
    """**The worker that held the session's state is gone**: it crashed, was killed (a call's
    timeout, a failed health check) or was recycled past ``session_hold``, so the state went with
    it. Nobody's fault in particular; the session cannot be used again: open a new one and
    rebuild its state. (A session with ``affinity="hint"`` is moved to another worker instead.)
    """


class SessionExpired(SessionLost):
    """**The session was idle longer than its TTL**, and its state was dropped. The caller's: use
    it more often, or give it a longer ``ttl`` (``session_ttl``)."""


class SessionBusy(SessionError):
    """**The session's worker was busy** and the session's ``affinity`` is ``"fail"``. Not an
    error of anyone's: retry later, or use ``affinity="wait"`` to queue for that worker."""


class SessionLimit(SessionError, PoolSaturated):
    """**Too many sessions are open** (``max_sessions``). The caller's: close sessions when done
    (``with``/``async with``), or raise ``max_sessions``."""


class SessionClosed(SessionError, RuntimeError):
    """**The session is closed**: a call came after its ``close()``. The caller's fault."""


class SessionsUnsupported(SessionError):
    """**The pool's workers do not keep sessions**: their HELLO lacks the ``"session"`` feature
    (e.g. the Node.js runtime). The worker program's limit: use a Python worker for sessions."""


def signal_name(exitcode: int | None) -> str | None:
    """``-11`` -> ``"SIGSEGV"``; ``None`` for normal exits and unknown codes."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return None


def describe_exit(exitcode: int | None) -> str:
    """A human sentence for an exit code, naming signals and their usual causes."""
    if exitcode is None:
        return "exit status unknown"
    name = signal_name(exitcode)
    if name is None:
        if exitcode < 0:
            return f"killed by signal {-exitcode}"
        return f"exited with code {exitcode}"
    hint = {
        "SIGSEGV": "a crash in native code (segmentation fault)",
        "SIGBUS": "a crash in native code (bus error)",
        "SIGABRT": "abort() in native code or a failed C assertion",
        "SIGKILL": "killed from outside: the OOM killer, a timeout, or someone's kill -9",
        "SIGTERM": "terminated from outside",
        "SIGFPE": "an arithmetic fault in native code",
        "SIGILL": "an illegal instruction in native code",
    }.get(name)
    text = f"killed by {name}({exitcode})"
    return f"{text}: likely {hint}" if hint else text
