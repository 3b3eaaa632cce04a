"""Sessions as plain state: which worker holds which session, and who waits for that worker.

A session's calls go to the worker that holds its state (its *home*). What a call does when the
home is busy is the session's ``affinity``:

* ``"wait"``: queue for the home (a *pinned* waiter, served before the pool's FIFO queue when the
  home is released); strict.
* ``"fail"``: raise :class:`SessionBusy` at once; strict.
* ``"hint"``: run on any free worker; the state is a per-worker cache (each worker that served
  the session holds its own copy, opened there on first use), and a session whose home died or
  was recycled moves to the next worker that serves it.

A strict session whose home leaves service (crash, timeout kill, recycling) is *ended*: its next
call raises :class:`SessionLost`, never runs on a fresh worker with empty state. Nothing here
does I/O: like the rest of :class:`~snakeden._checkout.Checkout` (which mixes this class in),
each step changes state under the checkout's lock and returns what the caller must do (which
workers must be sent SESSION_CLOSE); ``tests/test_checkout_sessions.py`` drives it without a
process.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

from snakeden._config import PoolConfig
from snakeden._errors import (
    PoolSaturated,
    SessionBusy,
    SessionClosed,
    SessionError,
    SessionExpired,
    SessionLimit,
    SessionLost,
    SessionsUnsupported,
)
from snakeden._handle import BUSY, DEAD, IDLE, STARTING, STOPPING, WorkerHandle
from snakeden._protocol import FEATURE_SESSION

#: What a session's call does when the worker holding its state is busy (see module docstring).
Affinity = Literal["wait", "fail", "hint"]
AFFINITIES: tuple[str, ...] = ("wait", "fail", "hint")

_GONE = (STOPPING, DEAD)


class _Waiter(Protocol):
    worker: WorkerHandle | None

    def alive(self) -> bool: ...

    def fail(self, exc: BaseException) -> None: ...


W = TypeVar("W", bound=_Waiter)


class SessionRecord:
    """The host's record of one session."""

    __slots__ = (
        "active",
        "affinity",
        "closed",
        "ended",
        "home",
        "id",
        "last_used",
        "opened",
        "ttl",
    )

    def __init__(
        self, session_id: int, affinity: Affinity, ttl: float | None, home: WorkerHandle | None
    ) -> None:
        self.id = session_id
        self.affinity = affinity
        self.ttl = ttl
        self.home = home  # the worker holding its state (None: not placed yet, or hint re-homing)
        self.opened: set[WorkerHandle] = set()  # workers sent SESSION_OPEN and no SESSION_CLOSE
        self.active = 0  # calls of this session under way or queued: never expired meanwhile
        self.last_used = 0.0
        self.closed = False  # by its owner: calls raise SessionClosed
        self.ended: tuple[type[SessionLost], str] | None = None  # lost or expired: why

    @property
    def strict(self) -> bool:
        return self.affinity != "hint"

    def __repr__(self) -> str:
        home = self.home.id if self.home is not None else None
        state = "closed" if self.closed else "ended" if self.ended else "open"
        return f"<Session {self.id} {self.affinity} home={home} {state} active={self.active}>"


class SessionHandle:
    """What both fronts' session handles hold (``AsyncSession``, ``Session``): the record once
    open, and what a user may read of it."""

    _how = "with pool.session() as s"  # how it is opened, for the error saying it is not

    def __init__(self, affinity: Affinity, ttl: float | None) -> None:
        self.affinity = affinity
        self.ttl = ttl
        self._rec: SessionRecord | None = None

    def _register(self, checkout: SessionCheckout[Any]) -> None:
        if self._rec is not None:
            raise RuntimeError("the session is already open")
        self._rec = checkout.open_session(self.affinity, self.ttl)

    @property
    def id(self) -> int:
        """The session's id: ``snakeden.context().session.id`` in the worker."""
        return self._open_record().id

    @property
    def worker_id(self) -> str | None:
        """The id of the worker holding the session's state (None: none at the moment)."""
        home = self._open_record().home
        return home.id if home is not None else None

    def _open_record(self) -> SessionRecord:
        if self._rec is None:
            raise RuntimeError(f"the session is not open: use '{self._how}'")
        return self._rec


class SessionCheckout(Generic[W]):
    """The session half of :class:`~snakeden._checkout.Checkout` (mixed into it)."""

    # Provided by Checkout.
    lock: threading.Lock
    clock: Callable[[], float]
    config: PoolConfig
    depth: int
    idle: deque[WorkerHandle]
    workers: dict[str, WorkerHandle]
    waiters: deque[W]
    leased: int
    reject: BaseException | None
    _should_grow: Callable[[], bool]

    def _init_sessions(self) -> None:
        self.sessions: dict[int, SessionRecord] = {}
        self.pinned: dict[WorkerHandle, deque[W]] = {}  # "wait" callers, by the worker
        self._last_session_id = 0

    # --- a session's life ------------------------------------------------------------------------

    def open_session(self, affinity: Affinity, ttl: float | None) -> SessionRecord:
        """Register a session and choose its home: the in-service worker holding the fewest
        sessions (an idle one on a tie), else one still starting; one due for recycling only
        when there is no other."""
        with self.lock:
            if self.reject is not None:
                raise self.reject
            if len(self.sessions) >= self.config.max_sessions:
                raise SessionLimit(
                    f"{len(self.sessions)} sessions are open (max_sessions="
                    f"{self.config.max_sessions}); close sessions when done or raise max_sessions"
                )
            home = self._choose_home()
            if home is None:
                raise SessionError(
                    "no worker is running or starting to hold a session; retry once the pool "
                    "has workers again"
                )
            if home.state is not STARTING:
                _check_feature(home)
            self._last_session_id = _free_id(self._last_session_id, self.sessions)
            rec = SessionRecord(self._last_session_id, affinity, ttl, home)
            rec.last_used = self.clock()
            home.sessions += 1
            self.sessions[rec.id] = rec
            return rec

    def _choose_home(self) -> WorkerHandle | None:
        best: WorkerHandle | None = None
        best_key: tuple[bool, bool, int, bool] | None = None
        for w in self.workers.values():
            if w.state in _GONE or w.must_retire:
                continue
            # Not one about to be recycled, unless there is nothing else.
            key = (w.state is STARTING, w.retiring, w.sessions, w.state is not IDLE)
            if best_key is None or key < best_key:
                best, best_key = w, key
        return best

    def session_begin(self, rec: SessionRecord) -> None:
        """A call (or map) of ``rec`` starts. Raises if the session cannot be used: closed,
        ended, or idle past its TTL (then the caller must :meth:`close_session` it, to drop its
        state in the worker, and re-raise)."""
        with self.lock:
            self._check_usable(rec)
            now = self.clock()
            if rec.active == 0 and rec.ttl is not None and now - rec.last_used > rec.ttl:
                self._end(rec, SessionExpired, f"it was idle more than its ttl of {rec.ttl}s")
                self._check_usable(rec)
            rec.active += 1
            rec.last_used = now

    def session_done(self, rec: SessionRecord) -> None:
        with self.lock:
            rec.active -= 1
            rec.last_used = self.clock()

    def close_session(self, rec: SessionRecord) -> list[WorkerHandle]:
        """The owner closed the session (or it ended and its owner was told). Returns the live
        workers to send SESSION_CLOSE to; each is returned once."""
        with self.lock:
            if not rec.closed:
                rec.closed = True
                self._unhome(rec)
                self.sessions.pop(rec.id, None)
            out = [w for w in rec.opened if w.state not in _GONE]
            rec.opened.clear()
            return out

    def expire_sessions(self, now: float) -> list[SessionRecord]:
        """Sessions idle past their TTL, now ended; the caller closes each (SESSION_CLOSE)."""
        out = []
        with self.lock:
            for rec in list(self.sessions.values()):
                if (
                    rec.ended is None
                    and rec.active == 0
                    and rec.ttl is not None
                    and now - rec.last_used > rec.ttl
                ):
                    self._end(rec, SessionExpired, f"it was idle more than its ttl of {rec.ttl}s")
                    out.append(rec)
        return out

    def _end(self, rec: SessionRecord, cls: type[SessionLost], why: str) -> None:
        """Lost or expired: its later calls raise ``cls``; it no longer counts as open (its
        owner may never close it)."""
        if rec.ended is None:
            rec.ended = (cls, f"session {rec.id} ended: {why}; open a new session")
            self._unhome(rec)
            self.sessions.pop(rec.id, None)

    def _unhome(self, rec: SessionRecord) -> None:
        if rec.home is not None:
            rec.home.sessions -= 1
            rec.home = None

    def _check_usable(self, rec: SessionRecord) -> None:
        if rec.closed:
            if rec.ended is not None:  # closed because it ended: say why, every time
                cls, message = rec.ended
                raise cls(message)
            raise SessionClosed(f"session {rec.id} is closed; open a new one with pool.session()")
        home = rec.home
        if rec.ended is None and home is not None and home.state in _GONE:
            if home not in rec.opened:
                # Its state was never created there (no call reached it): nothing is lost,
                # so it moves, strict or not.
                self._unhome(rec)
                rec.home = self._choose_home()
                if rec.home is not None:
                    rec.home.sessions += 1
                elif rec.strict:
                    raise SessionError(
                        "no worker is running or starting to hold the session; retry once the "
                        "pool has workers again"
                    )
            elif rec.strict:
                cause = home.cause.value if home.cause is not None else "exited"
                self._end(
                    rec,
                    SessionLost,
                    f"worker {home.id} (pid {home.pid}), which held its state, left service "
                    f"({cause})",
                )
            else:
                rec.opened.discard(home)
                self._unhome(rec)  # hint: the next worker that serves it becomes its home
        if rec.ended is not None:
            cls, message = rec.ended
            raise cls(message)

    # --- calls -----------------------------------------------------------------------------------

    def acquire_session(
        self, rec: SessionRecord, make_waiter: Callable[[], W]
    ) -> tuple[WorkerHandle | W, bool]:
        """Like ``acquire``, for a call of ``rec``: its home if free, else by its affinity."""
        with self.lock:
            if self.reject is not None:
                raise self.reject
            self._check_usable(rec)
            w = rec.home
            if w is not None:
                if w.state is IDLE:
                    self.idle.remove(w)
                    return self._lease(w), False
                # A worker serving several calls at once takes the session's next; a pipelined
                # one does not queue it behind the call it runs (a session's calls wait).
                if (
                    w.state is BUSY
                    and w.inflight < w.depth
                    and not w.must_retire
                    and not w.pipelined
                ):
                    w.inflight += 1
                    self.leased += 1
                    return w, False
            if rec.affinity == "fail":
                where = f"worker {w.id}" if w is not None else "its worker"
                raise SessionBusy(
                    f"session {rec.id}'s {where} is busy and its affinity is 'fail'; retry "
                    f"later, or open the session with affinity='wait' to queue for it"
                )
            self._check_queue_room()
            if rec.affinity == "hint":
                if not self.waiters and self.idle:
                    return self._lease(self.idle.pop()), False
                waiter = make_waiter()
                self.waiters.append(waiter)
                return waiter, self._should_grow()
            assert w is not None  # a strict session always has a home until it ends
            waiter = make_waiter()
            self.pinned.setdefault(w, deque()).append(waiter)
            return waiter, False

    def _lease(self, w: WorkerHandle) -> WorkerHandle:
        w.move(BUSY)
        w.inflight = 1
        w.solo = False
        w.leased_at = self.clock()
        self.leased += 1
        return w

    def _check_queue_room(self) -> None:
        queued = len(self.waiters) + sum(len(q) for q in self.pinned.values())
        if queued >= self.config.max_queue:
            raise PoolSaturated(
                f"{queued} callers are already waiting (max_queue={self.config.max_queue}); "
                f"slow down, add workers or raise max_queue"
            )

    def session_on(self, rec: SessionRecord, w: WorkerHandle) -> bool:
        """The call of ``rec`` leased ``w``: make ``w`` its home if it has none (hint), and say
        whether SESSION_OPEN must precede the call (first call of the session on ``w``)."""
        with self.lock:
            if rec.closed:
                raise SessionClosed(f"session {rec.id} was closed while its call waited")
            _check_feature(w)
            if rec.home is None and rec.ended is None:
                rec.home = w
                w.sessions += 1
            if w in rec.opened:
                return False
            rec.opened.add(w)
            return True

    # --- the checkout's hooks --------------------------------------------------------------------

    def _next_pinned(self, w: WorkerHandle) -> W | None:
        """The first live caller pinned to ``w`` (released and still in service)."""
        queue = self.pinned.get(w)
        if queue is None:
            return None
        waiter = None
        while queue:
            candidate = queue.popleft()
            if candidate.alive():
                waiter = candidate
                break
        if not queue:
            del self.pinned[w]
        return waiter

    def _orphan_pinned(self, w: WorkerHandle) -> None:
        """``w`` left service: callers pinned to it fail with SessionLost (never re-routed)."""
        queue = self.pinned.pop(w, None)
        if not queue:
            return
        cause = w.cause.value if w.cause is not None else "exited"
        for waiter in queue:
            waiter.fail(
                SessionLost(
                    f"worker {w.id} (pid {w.pid}), which held this call's session, left service "
                    f"({cause}) while the call waited for it; open a new session"
                )
            )

    def _drop_pinned(self, waiter: W) -> None:
        for w, queue in list(self.pinned.items()):
            try:
                queue.remove(waiter)
            except ValueError:
                continue
            if not queue:
                del self.pinned[w]
            return

    def _take_all_pinned(self) -> list[W]:
        out = [waiter for queue in self.pinned.values() for waiter in queue]
        self.pinned.clear()
        return out

    def _held(self, w: WorkerHandle) -> bool:
        """``w`` is due for recycling: hold it while it has open sessions, up to session_hold."""
        if not w.sessions:
            return False
        now = self.clock()
        if w.held_since is None:
            w.held_since = now
        hold = self.config.session_hold
        return hold is None or now - w.held_since < hold

    # --- blocking mode: SESSION_CLOSE to a busy worker -----------------------------------------

    def post_close(self, w: WorkerHandle, data: bytes) -> bool:
        """Queue ``data`` for ``w``. True when ``w`` was idle and is now leased to the caller,
        who must send :meth:`take_outbox` and release it; else the current lease's end does."""
        with self.lock:
            if w.state in _GONE or w.state is STARTING:
                return False  # gone: nothing to drop; starting: was never sent SESSION_OPEN
            w.outbox.append(data)
            if w.state is IDLE:
                self.idle.remove(w)
                self._lease(w).current_command = "(session close)"
                return True
            return False

    def take_outbox(self, w: WorkerHandle) -> bytes:
        with self.lock:
            data, w.outbox = b"".join(w.outbox), []
            return data

    # --- observation -----------------------------------------------------------------------------

    def session_counts(self) -> dict[str, int]:
        """Open sessions homed on each live worker (``stats().sessions_by_worker``)."""
        return {w.id: w.sessions for w in self.workers.values() if w.state not in _GONE}

    def _check_session_invariants(self) -> None:
        homed: dict[WorkerHandle, int] = {}
        for rec in self.sessions.values():
            assert not rec.closed, f"closed session still registered: {rec!r}"
            if rec.home is not None:
                assert rec.ended is None, f"ended session still homed: {rec!r}"
                homed[rec.home] = homed.get(rec.home, 0) + 1
        for w in self.workers.values():
            if w.state not in _GONE:
                assert w.sessions == homed.get(w, 0), f"{w!r} counts {w.sessions} sessions"
        for w, queue in self.pinned.items():
            assert queue, f"empty pinned queue kept for {w!r}"


def check_affinity(affinity: object) -> Affinity:
    if affinity not in AFFINITIES:
        raise ValueError(
            f"affinity must be 'wait' (queue for the session's worker), 'fail' (SessionBusy "
            f"when it is busy) or 'hint' (run anywhere; the state is a per-worker cache), "
            f"not {affinity!r}"
        )
    return affinity  # type: ignore[return-value]


def session_ttl(ttl: float | None) -> float | None:
    if ttl is not None and ttl <= 0:
        raise ValueError(f"a session's ttl must be > 0 seconds or None (never), not {ttl!r}")
    return ttl


def _check_feature(w: WorkerHandle) -> None:
    if FEATURE_SESSION not in w.features:
        raise SessionsUnsupported(
            f"worker {w.id} (pid {w.pid}) does not keep sessions: its HELLO does not list the "
            f"'session' feature (docs/protocol.md section 6.6). Use a Python worker, or make "
            f"the calls without a session"
        )


def _free_id(last: int, taken: dict[int, SessionRecord]) -> int:
    """The next session id after ``last``: 1 to 2**32-1 (a frame id), not in use."""
    candidate = last
    while True:
        candidate = candidate % 0xFFFF_FFFF + 1
        if candidate not in taken:
            return candidate
