"""What the caller whose call was running is told when its worker died, broke the protocol, was
lost with its node, or was stopped by ``close()``: the exception, naming the exit (a signal by
name), the command, and the worker's last stderr lines."""

from __future__ import annotations

from snakeden._channel import ChannelLost
from snakeden._errors import ProtocolError, WorkerCrashed, WorkerLost, describe_exit
from snakeden._handle import Cause, WorkerHandle
from snakeden._output import tail_text
from snakeden._protocol import ProtocolViolation

# A call is sent again when its worker provably never had it; a bound, so that a pool whose
# every new worker dies at once cannot keep one caller going round for ever.
MAX_DISPATCHES = 10


def crash_error(w: WorkerHandle, lost: ChannelLost, command: str) -> WorkerCrashed:
    """The exception for the caller whose call was running when the worker died (call it
    once the exit is known: it names the exit status and the last stderr lines)."""
    assert w.proc is not None
    code = w.proc.returncode
    tail = w.stderr_tail()
    what = describe_exit(code)
    if is_violation(lost):
        cls: type[WorkerCrashed] = ProtocolError
        head = (
            f"worker {w.id} (pid {w.pid}) broke the protocol while running {command!r}: "
            f"{lost.cause}; it was killed and is being replaced"
        )
    elif w.proc.lost is not None:
        return WorkerLost(
            f"worker {w.id} (pid {w.pid} on node {w.proc.node}) was lost while running "
            f"{command!r}: {w.proc.lost}. The call may or may not have run; the pool is "
            f"replacing the worker on the nodes that remain" + tail_text(tail),
            node=w.proc.node,
            exitcode=code,
            stderr_tail=tail,
            worker_id=w.id,
            pid=w.pid,
        )
    elif w.cause is Cause.CLOSED:
        cls = WorkerCrashed
        head = (
            f"worker {w.id} (pid {w.pid}) was stopped by close() while running {command!r} "
            f"(the drain timeout passed): {what}"
        )
    else:
        cls = WorkerCrashed
        head = f"worker {w.id} (pid {w.pid}) died while running {command!r}: {what}"
        if lost.unsent:
            head += f" (it died before the call reached it, {MAX_DISPATCHES} times in a row)"
    return cls(head + tail_text(tail), exitcode=code, stderr_tail=tail, worker_id=w.id, pid=w.pid)


def is_violation(lost: ChannelLost) -> bool:
    return isinstance(lost.cause, ProtocolViolation)
