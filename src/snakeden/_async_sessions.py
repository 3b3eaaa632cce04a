"""A session on the asyncio ``Pool``: calls that share one worker's state (``pool.session()``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from snakeden import _progress
from snakeden._calls import UNSET as _UNSET
from snakeden._calls import Command
from snakeden._core import PoolCore
from snakeden._errors import SessionExpired
from snakeden._sessions import Affinity, SessionHandle, SessionRecord
from snakeden._streams import Stream

if TYPE_CHECKING:
    from snakeden._pool import Pool


class AsyncSession(SessionHandle):
    """A session of a :class:`Pool` (see :meth:`Pool.session`): ``async with`` it, or
    ``await close()`` it. Its calls run where its state is, by its affinity."""

    _how = "async with pool.session() as s"

    def __init__(self, pool: Pool, core: PoolCore, affinity: Affinity, ttl: float | None) -> None:
        super().__init__(affinity, ttl)
        self._pool = pool
        self._core = core

    async def open(self) -> AsyncSession:
        """Open the session (``async with`` does this): registers it and picks its worker.
        Raises :class:`SessionLimit` past ``max_sessions`` and :class:`SessionsUnsupported`
        when the workers do not keep sessions."""
        self._register(self._core.checkout)
        return self

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop the session's state in its worker. Calls after this raise SessionClosed."""
        if self._rec is not None:
            self._core.close_session(self._rec)

    async def call(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> Any:
        """Like :meth:`Pool.call`, on the worker holding this session's state."""
        return await self.call_with(cmd, args, kwargs, timeout=timeout)

    async def call_with(
        self,
        cmd: Command,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = _UNSET,
    ) -> Any:
        rec = self._begin()
        try:
            return await self._pool.call_with(cmd, args, kwargs, timeout=timeout, session=rec)
        finally:
            self._core.checkout.session_done(rec)

    def stream(
        self, cmd: Command, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any
    ) -> Stream:
        """Like :meth:`Pool.stream`, on the worker holding this session's state (the generator
        sees it as ``snakeden.context().session``). Its start is a use of the session; it does
        not hold the session under way, so one longer than ``ttl`` alone can let it expire."""
        return self._pool._stream(cmd, args, kwargs, timeout, self._open_record())

    async def map(
        self,
        cmd: Command,
        iterable: Iterable[Any],
        *,
        chunksize: int = 1,
        timeout: float | None = _UNSET,
        star: bool = False,
        progress: _progress.Progress = False,
    ) -> list[Any]:
        """Like :meth:`Pool.map`, every item on this session's worker (``"hint"``: anywhere)."""
        rec = self._begin()
        try:
            return await self._pool._map(cmd, iterable, chunksize, timeout, star, progress, rec)
        finally:
            self._core.checkout.session_done(rec)

    def _begin(self) -> SessionRecord:
        rec = self._open_record()
        try:
            self._core.checkout.session_begin(rec)
        except SessionExpired:
            self._core.close_session(rec)  # drop its state in the worker now
            raise
        return rec

    def __repr__(self) -> str:
        return f"<AsyncSession {self._rec!r}>" if self._rec else "<AsyncSession not open>"
