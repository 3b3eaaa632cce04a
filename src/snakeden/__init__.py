"""snakeden: a pool of long-lived, pre-warmed worker processes.

Calls run concurrently on workers that survive crashes of their peers, are killed when a call
hangs, keep state between calls, and speak a small language-neutral protocol.
"""

from snakeden._async_sessions import AsyncSession
from snakeden._commands import command, concurrency
from snakeden._config import PoolOptions, RayOptions
from snakeden._errors import (
    BadCall,
    CallError,
    CallTimeout,
    FeatureNotSupported,
    HostCallDeadlock,
    NotAReference,
    PayloadTooLarge,
    PoolBroken,
    PoolClosed,
    PoolError,
    PoolSaturated,
    ProtocolError,
    QueueTimeout,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    SessionBusy,
    SessionClosed,
    SessionError,
    SessionExpired,
    SessionLimit,
    SessionLost,
    SessionsUnsupported,
    SnakedenError,
    UnknownCommand,
    WorkerCrashed,
    WorkerLost,
    WorkerStartError,
)
from snakeden._events import EventKind, WorkerEvent
from snakeden._pool import Pool
from snakeden._sessions import Affinity
from snakeden._stats import Percentiles, PoolStats
from snakeden._streams import Stream
from snakeden._sync_sessions import Session
from snakeden._syncpool import SyncPool
from snakeden._worker_context import CallCancelled, CallContext, context

__version__ = "0.1.0"

__all__ = [
    "Affinity",
    "AsyncSession",
    "BadCall",
    "CallCancelled",
    "CallContext",
    "CallError",
    "CallTimeout",
    "EventKind",
    "FeatureNotSupported",
    "HostCallDeadlock",
    "NotAReference",
    "PayloadTooLarge",
    "Percentiles",
    "Pool",
    "PoolBroken",
    "PoolClosed",
    "PoolError",
    "PoolOptions",
    "PoolSaturated",
    "PoolStats",
    "ProtocolError",
    "QueueTimeout",
    "RayOptions",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "Session",
    "SessionBusy",
    "SessionClosed",
    "SessionError",
    "SessionExpired",
    "SessionLimit",
    "SessionLost",
    "SessionsUnsupported",
    "SnakedenError",
    "Stream",
    "SyncPool",
    "UnknownCommand",
    "WorkerCrashed",
    "WorkerEvent",
    "WorkerLost",
    "WorkerStartError",
    "command",
    "concurrency",
    "context",
]
