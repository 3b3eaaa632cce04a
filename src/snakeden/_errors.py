"""The exception hierarchy. Every class says whose fault it is, so callers know what to fix.

All of them derive from :class:`SnakedenError`. Per-call failures derive from :class:`CallError`;
failures of the pool as a whole from :class:`PoolError`. Timeouts also derive from the built-in
:class:`TimeoutError` so generic timeout handling keeps working. ``asyncio.CancelledError`` is never
wrapped in any of these: cancelling a caller always raises the caller's own cancellation.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence


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
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str, command: str) -> None:
        super().__init__(f"{type_name}: {message} (raised by command {command!r} in the worker)")
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback
        self.command = command
        if remote_traceback:
            self.__cause__ = RemoteTraceback(remote_traceback)


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
