"""One worker as the host sees it, and the one place that decides what state it is in.

A worker's life::

                 hello                 checkout (lease)
    STARTING ───────────> IDLE ──────────────────────────> BUSY
        │ └──────────────────────────────────────────────> │  hello, with a caller waiting
        │                  │  <──────────────────────────   │
        │                  │   last lease released,         │
        │                  │   still in service             │
        │    fail / retire │                                │ fail (kill) / retire at release
        └──────────────────┴──────────> STOPPING <──────────┘
                                            │
     any state ───── exit observed ────> DEAD

Every move goes through :meth:`WorkerHandle.move`, which refuses a move the diagram does not
have. Moves happen only inside :class:`snakeden._checkout.Checkout`, under its lock, so a
worker's state is decided in one place. Leaving service always records a :class:`Cause`; the
first cause wins (a worker killed for a timeout that then exits stays ``TIMEOUT``).

Being leased is not a state but a count (``inflight``): a worker that fails while a caller holds
its lease is ``STOPPING`` (or ``DEAD``) with ``inflight > 0`` until the caller releases it, and
only then may its file descriptors be closed (a caller may be blocked reading them).
"""

from __future__ import annotations

import enum
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio

    from snakeden._channel import Channel
    from snakeden._output import OutputTail
    from snakeden._process import WorkerProcess
    from snakeden._regions import Region


class WState(enum.Enum):
    STARTING = "starting"  # launched, no HELLO yet
    IDLE = "idle"  # in service, in the idle set
    BUSY = "busy"  # in service, leased: to callers, or to the supervisor for a ping
    STOPPING = "stopping"  # out of service (see ``cause``), exit pending
    DEAD = "dead"  # exit observed


class Cause(enum.Enum):
    """Why a worker left service."""

    RETIRED = "retired"  # recycled: max_calls, max_age or max_memory
    SHRUNK = "shrunk"  # idle past idle_timeout while above size
    CLOSED = "closed"  # the pool is closing
    TIMEOUT = "timeout"  # a call outlived its timeout: killed
    CRASHED = "crashed"  # a caller saw its channel end mid-call
    PROTOCOL = "protocol error"  # garbage or an oversized frame: killed
    UNHEALTHY = "unhealthy"  # no answer to a ping, or stopped (SIGSTOP)
    CANCEL_IGNORED = "cancelled, did not stop"  # ignored CANCEL for cancel_grace: killed
    INTERRUPTED = "interrupted"  # the caller's thread was interrupted mid-call: state unknown
    EXITED = "exited"  # died on its own, noticed by the exit watcher

    @property
    def planned(self) -> bool:
        """The pool stopped it on purpose: no crash to report, no restart to count."""
        return self in (Cause.RETIRED, Cause.SHRUNK, Cause.CLOSED)


_MOVES: dict[WState, frozenset[WState]] = {
    WState.STARTING: frozenset({WState.IDLE, WState.BUSY, WState.STOPPING, WState.DEAD}),
    WState.IDLE: frozenset({WState.BUSY, WState.STOPPING, WState.DEAD}),
    WState.BUSY: frozenset({WState.IDLE, WState.STOPPING, WState.DEAD}),
    WState.STOPPING: frozenset({WState.DEAD}),
    WState.DEAD: frozenset(),
}


# Checked on every call's path (IDLE <-> BUSY), so as bits on the members: hashing an Enum
# member runs Python code (enum.__hash__), a set lookup of a pair of them costs a microsecond.
for _i, _state in enumerate(WState):
    _state._bit = 1 << _i  # type: ignore[attr-defined]
for _state, _targets in _MOVES.items():
    _state._allowed = sum(t._bit for t in _targets)  # type: ignore[attr-defined]


# The per-call paths name states through these globals: on Python 3.11 every ``WState.X`` runs
# through the slot of EnumType.__getattr__ (several times the cost of a global; eleven such
# lookups were a tenth of the host's cost of a call).
STARTING: Final = WState.STARTING
IDLE: Final = WState.IDLE
BUSY: Final = WState.BUSY
STOPPING: Final = WState.STOPPING
DEAD: Final = WState.DEAD


class BadTransition(AssertionError):
    """A bug in snakeden: a worker was moved along an edge its state diagram does not have."""


class WorkerHandle:
    """The host's record of one worker."""

    def __init__(self, worker_id: str, born: float, max_calls: int | None) -> None:
        self.id = worker_id
        self.state = WState.STARTING
        self.cause: Cause | None = None
        self.proc: WorkerProcess | None = None
        self.channel: Channel | None = None
        self.stdout: OutputTail | None = None
        self.stderr: OutputTail | None = None
        self.born = born
        self.ready_at: float | None = None
        self.last_used = born
        self.calls = 0
        # Observation only (metrics, the live view): seconds spent on calls, when the current
        # lease began (pool clock), and the command the latest lease runs.
        self.busy_time = 0.0
        self.leased_at = 0.0
        # How long its previous call ran, in the host's view (SyncPool.submit's lanes: a worker
        # whose calls run long takes none behind them, which would only be taken back).
        self.last_run = 0.0
        self.current_command = ""
        self.inflight = 0  # leases held (>1 only with pipelining)
        self.max_calls = max_calls
        self.retiring = False  # wants a replacement; serves on until it is warm
        self.must_retire = False  # leave service at the next release
        self.replacing: WorkerHandle | None = None  # the worker warming up to take its place
        self.replacement_scheduled = False
        self.next_memory_check = 0.0
        self.commands: tuple[str, ...] = ()
        # Its HELLO lists the "trace" feature: an instrumented pool sends it the caller's trace
        # context (the CONTEXT flag). Never set for a worker that did not ask.
        self.takes_context = False
        self.depth = 1  # calls in flight at most: the pool's pipeline, or the HELLO concurrency
        # Runs its calls one at a time, and takes up to ``depth`` (the pool's pipeline) in
        # flight: the others wait in its pipe, behind the running one (see Checkout.ready).
        self.pipelined = False
        self.solo = False  # pipelined, and its lease's call lets nothing queue behind it
        self.features: tuple[str, ...] = ()  # its HELLO's, e.g. "session"
        # Sessions homed here (see _sessions); while any is open, recycling waits up to
        # session_hold from ``held_since``, and shrinking passes this worker by.
        self.sessions = 0
        self.held_since: float | None = None
        # Blocking mode: SESSION_CLOSE frames for a busy worker, written by a lease of their own
        # once its current lease ends (only the lease holder writes to a blocking channel).
        self.outbox: list[bytes] = []
        self.takes_flat = False  # BATCH|FLAT calls (HELLO feature "map_flat")
        # Its shared-memory regions (see _regions), once its HELLO said it mapped them.
        self.region_in: Region | None = None
        self.region_out: Region | None = None
        self.close_on_release = False  # exited while leased: the last lease holder closes fds
        self.gone = threading.Event()  # exit status known and output drained
        self.gone_waiters: list[asyncio.Future[None]] = []

    def move(self, to: WState, cause: Cause | None = None) -> None:
        if not to._bit & self.state._allowed:  # type: ignore[attr-defined]
            raise BadTransition(f"worker {self.id}: {self.state.value} -> {to.value}")
        if self.cause is None and (to is STOPPING or to is DEAD):
            self.cause = cause or Cause.EXITED
        self.state = to

    @property
    def in_service(self) -> bool:
        """Ready or busy, and not being retired at its next release."""
        return self.state in (WState.IDLE, WState.BUSY) and not self.must_retire

    @property
    def active(self) -> bool:
        """Counts towards the pool's size: starting or in service, and not on its way out."""
        return (
            self.state in (WState.STARTING, WState.IDLE, WState.BUSY)
            and not self.retiring
            and not self.must_retire
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __repr__(self) -> str:
        cause = f" ({self.cause.value})" if self.cause else ""
        return (
            f"<Worker {self.id} pid={self.pid} {self.state.value}{cause} "
            f"inflight={self.inflight} calls={self.calls}>"
        )

    def stderr_tail(self, n: int = 25) -> list[str]:
        return list(self.stderr.lines)[-n:] if self.stderr else []
