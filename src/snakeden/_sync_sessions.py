"""Sessions of a :class:`~snakeden.SyncPool`: ``with pool.session() as s: s.call(...)``.

The session's bookkeeping (its home worker, affinity, expiry) is the checkout's
(``_sessions``); this is the blocking front's handle on it, safe to share between threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from snakeden._calls import UNSET as _UNSET
from snakeden._calls import Command
from snakeden._errors import SessionExpired
from snakeden._sessions import Affinity, SessionHandle, SessionRecord

if TYPE_CHECKING:
    import concurrent.futures as cf

    from snakeden._sync_streams import BridgedStream, SyncStream
    from snakeden._syncpool import SyncPool


class Session(SessionHandle):
    """A session of a :class:`SyncPool` (see :meth:`SyncPool.session`): use it with ``with``, or
    ``close()`` it. Its calls run where its state is, by its affinity; safe from many threads."""

    def __init__(self, pool: SyncPool, affinity: Affinity, ttl: float | None) -> None:
        super().__init__(affinity, ttl)
        self._pool = pool

    def open(self) -> Session:
        """Open the session (``with`` does this); raises as :meth:`AsyncSession.open`."""
        self._register(self._pool._core.checkout)
        return self

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the session's state in its worker. Calls after this raise SessionClosed."""
        if self._rec is not None:
            self._pool._core.close_session(self._rec)

    def call(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> Any:
        """Like :meth:`SyncPool.call`, on the worker holding this session's state."""
        return self.run(self._pool, self._open_record(), cmd, args, kwargs, False, _UNSET, timeout)

    def stream(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> SyncStream | BridgedStream:
        """Like :meth:`SyncPool.stream`, on the worker holding this session's state; see
        :meth:`snakeden.AsyncSession.stream` for how it counts as a use."""
        return self._pool._stream(cmd, args, kwargs, timeout, self._open_record())

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Like :meth:`SyncPool.submit`, as a call of this session."""
        return self._pool._submit(fn, args, kwargs, batch=False, session=self._open_record())

    def map(
        self, fn: Callable[..., Any] | str, *iterables: Iterable[Any], timeout: float | None = None
    ) -> Iterator[Any]:
        """Like :meth:`SyncPool.map` (one call per item), as calls of this session."""
        futs = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
        end = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            try:
                for f in futs:
                    yield f.result(None if end is None else end - time.monotonic())
            finally:
                for f in futs:
                    f.cancel()

        return results()

    @staticmethod
    def run(  # noqa: PLR0917 - call_with's arguments, passed on as they are
        pool: SyncPool,
        rec: SessionRecord,
        cmd: Command,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        batch: bool,
        queue_timeout: float | None,
        timeout: float | None = _UNSET,
    ) -> Any:
        """One call of session ``rec``: counted as under way, so it never expires meanwhile."""
        core = pool._core
        try:
            core.checkout.session_begin(rec)
        except SessionExpired:
            core.close_session(rec)  # drop its state in the worker now
            raise
        try:
            return pool.call_with(
                cmd,
                args,
                kwargs,
                timeout=timeout,
                batch=batch,
                queue_timeout=queue_timeout,
                session=rec,
            )
        finally:
            core.checkout.session_done(rec)

    def __repr__(self) -> str:
        return f"<Session {self._rec!r}>" if self._rec else "<Session not open>"
