"""Every knob of a pool, in one frozen record, and how the fronts' keyword options become it."""

from __future__ import annotations

import difflib
import importlib.util
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, get_args

from snakeden._events import WorkerEvent
from snakeden._protocol import DEFAULT_MAX_FRAME_SIZE

#: Where shared memory beats the pipe on a 2-CPU VM (docs/benchmarks.md: 16 KiB by pipe is
#: faster, 64 KiB by shared memory is 1.6x faster).
DEFAULT_SHM_THRESHOLD = 64 * 1024

StartMethod = Literal["auto", "fork", "spawn"]
SerializerName = Literal["msgpack", "pickle"]
Backend = Literal["local", "ray"]
Placement = Literal["default", "spread"]


@dataclass(frozen=True)
class RayOptions:
    """Where and with what each worker runs on a Ray cluster (``backend="ray"``; see
    ``docs/ray.md``). Pass one as the pool option ``ray=``, or a dict of the same names.

    * ``address`` (default: none): the cluster to connect to (``"auto"``, ``"ray://..."``, an
      address); none: the cluster this process is already connected to, else ``RAY_ADDRESS``,
      else a local cluster that the pool starts and stops with itself.
    * ``num_cpus`` (default 1), ``num_gpus`` (default 0), ``memory`` (default: none, bytes),
      ``resources`` (default none, e.g. ``{"ssd": 1}``): what Ray reserves for each worker;
      a worker starts only on a node with that much free.
    * ``placement`` (default ``"default"``): ``"spread"`` spreads the workers across the
      nodes; a Ray ``PlacementGroup`` puts them in its bundles (``placement_bundle``, default
      -1: any bundle).
    * ``runtime_env`` (default: none): Ray's runtime environment for the workers (``pip``,
      ``working_dir``, ``py_modules``, ``env_vars``...): how the worker module gets onto
      nodes that do not have it.
    * ``namespace`` (default: Ray's): the namespace of the pool's actors, when the pool starts
      or connects Ray itself.
    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    placement: Placement | Any = "default"
    placement_bundle: int = -1
    runtime_env: Mapping[str, Any] | None = None
    namespace: str | None = None

    def validate(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0 or (self.memory is not None and self.memory < 0):
            raise ValueError("ray: num_cpus, num_gpus and memory must be >= 0")
        if isinstance(self.placement, str):
            _check_choice("ray placement", self.placement, get_args(Placement))
        elif not hasattr(self.placement, "bundle_specs"):
            raise ValueError(
                f"ray placement must be 'default', 'spread' or a ray PlacementGroup, not "
                f"{self.placement!r}"
            )


class PoolOptions(TypedDict, total=False):
    """The keyword options of :class:`snakeden.Pool` and :class:`snakeden.SyncPool`, all optional.

    This is the one place they are documented; a misspelt one is an error for mypy and, at run
    time, a ``TypeError`` that names the closest valid option.

    Size and start-up:

    * ``size`` (default: CPU count; ``0`` means the same): workers kept ready.
    * ``max_size`` (default: ``size``): grow up to this many workers when calls queue;
      ``idle_timeout`` (default: none) shrinks workers idle that many seconds back to ``size``.
    * ``start_method`` (default ``"auto"``): ``"fork"`` forks workers warm from a template
      process that imported the module once (Linux); ``"spawn"`` starts a fresh interpreter
      each; ``"auto"`` forks where it can.
    * ``preload`` (default ``()``): modules the fork template imports once (e.g. ``["numpy"]``).
    * ``python`` (default: this interpreter): another interpreter or venv (``"auto"`` then
      spawns).
    * ``command`` (default: none): start each worker from this argv instead of a Python
      interpreter: any program that speaks the worker protocol (``docs/protocol.md``), e.g.
      ``["node", "node/bin/snakeden-worker.js", "worker.js"]``. A ``target``, if given, is
      appended as the last argument (so one command serves several worker modules). The
      program gets ``env`` and ``cwd`` and every guarantee a Python worker gets (handshake,
      crash isolation, timeouts, health pings, recycling, no orphans); ``start_method``
      must stay ``"auto"`` (or ``"spawn"``), and ``python`` and ``preload`` do not apply.
    * ``min_ready`` (default: ``size``): start returns once this many workers are ready
      (``wait_ready()`` waits for the rest).
    * ``start_timeout`` (default 60 s): how long a worker (or the template) may take to say hello.
    * ``env`` (default: none), ``cwd`` (default: the host's): extra environment variables and
      the working directory of the worker processes.

    Calls:

    * ``serializer`` (default ``"msgpack"``, language neutral): or ``"pickle"`` for Python-only
      objects.
    * ``call_timeout`` (default: none): a call running longer has its worker killed and replaced
      and raises ``CallTimeout``; ``call(..., timeout=)`` overrides it per call.
    * ``queue_timeout`` (default: none): how long a call may wait for a free worker
      (``QueueTimeout``); ``max_queue`` (default 100000): callers that may wait at once
      (beyond it, ``PoolSaturated``).
    * ``pipeline`` (default 32, at most 63 take effect): calls in flight per worker, for the
      asyncio ``Pool`` and ``SyncPool.submit()`` (``SyncPool.call()`` from threads runs one at
      a time per worker). When no worker is free and no caller waits, a call without a timeout
      (its own or the queue's) may wait in a busy worker's pipe behind the call it runs, if
      that call began under 10 ms ago (``_pipeline.BEHIND_LIMIT``); once it is older, the calls
      behind it that the worker has not begun are taken back and queue again first in line. A
      crash or timeout fails only the running call: the calls behind it never began (the
      worker notes each call it begins) and run on another worker. Only local Python workers
      take calls behind others (not Node, not Ray). ``1``: never.
    * ``max_frame_size`` (default 256 MiB): the largest message either way (``PayloadTooLarge``).
    * ``shm_threshold`` (default 64 KiB; ``None``: never): byte buffers of at least this many
      bytes in a call's arguments or result (``bytes``, ``bytearray``, ``memoryview``, at the
      top level or nested in lists, tuples and dicts; with ``serializer="pickle"``, numpy
      arrays and other out-of-band pickle buffers) go through a shared-memory region each
      worker keeps for its whole life, one copy each way, instead of the pipe. Values arrive as
      they would by pipe (``bytes``; numpy arrays over their own writable memory). Local Python
      workers, not on Ray; elsewhere, and for a call sent behind another, calls go by pipe.
      Each region grows to the largest message through it (and shrinks back when much smaller
      ones follow); it is freed with its worker.
    * ``cancel_grace`` (default 5 s): a worker whose caller was cancelled gets this long to
      stop the call before it is killed.
    * ``stream_window`` (default 64): items a streaming command may run ahead of its reader
      (``pool.stream()``); the host grants more as the reader takes them.
    * ``host_functions`` (default: none): ``{name: function}`` (sync or ``async def``) worker
      code may call through ``snakeden.context().call_host(name, ...)``; more with
      ``pool.register()``.

    Health and recycling:

    * ``max_calls``, ``max_age``, ``max_memory`` (default: none): recycle a worker after N calls
      (±10% jitter from 10 calls up, exact below), T seconds, or USS bytes;
      ``memory_check_interval`` (default 2 s): how often ``max_memory`` is checked.
    * ``health_interval`` (default 10 s; ``None``: off), ``ping_timeout`` (default 5 s): idle
      workers are pinged; a silent or stopped one is replaced.
    * ``restart_backoff`` (default 0.05 s), ``restart_backoff_max`` (default 5 s): the wait
      before restarting after consecutive start failures, doubling up to the maximum;
      ``max_start_failures`` (default 5): that many in a row break the pool (``PoolBroken``).
    * ``shutdown_timeout`` (default 5 s): on close, how long a worker may take to exit after
      SHUTDOWN before SIGTERM (then SIGKILL).

    Sessions (``pool.session()``: calls that share state kept in one worker):

    * ``max_sessions`` (default 1000): sessions open at once; opening one more raises
      ``SessionLimit``.
    * ``session_ttl`` (default 600 s; ``None``: never): a session idle this long expires: its
      state is dropped in the worker, and its next call raises ``SessionExpired``;
      ``pool.session(ttl=)`` overrides it per session.
    * ``session_hold`` (default 60 s; ``None``: for ever): how long recycling (``max_calls``,
      ``max_age``, ``max_memory``) waits for a worker's open sessions to close before it
      recycles the worker anyway (those sessions' next calls raise ``SessionLost``). Shrinking
      (``idle_timeout``) never stops a worker that holds open sessions.

    Where the workers run:

    * ``backend`` (default ``"local"``): ``"ray"`` runs each worker under a Ray actor on a Ray
      cluster's nodes (``pip install 'snakeden[ray]'``; ``docs/ray.md``), with the same calls,
      errors and guarantees; a worker lost with its node fails its call with ``WorkerLost``.
    * ``ray`` (default: none): a :class:`RayOptions` (or a dict of its fields): the cluster's
      address, each worker's resources, placement and ``runtime_env``.

    Observation:

    * ``on_event`` (default: none): a callback receiving a :class:`WorkerEvent` for each
      lifecycle event (started, ready, crashed, timed_out, recycled, replaced, ...).
    * ``clock`` (default ``time.monotonic``): the pool's clock, injectable for tests.
    """

    size: int
    max_size: int | None
    start_method: StartMethod
    preload: Iterable[str]
    python: str | None
    command: Sequence[str] | None
    serializer: SerializerName
    max_queue: int
    queue_timeout: float | None
    call_timeout: float | None
    start_timeout: float
    shutdown_timeout: float
    cancel_grace: float
    max_frame_size: int
    env: Mapping[str, str] | None
    cwd: str | None
    max_calls: int | None
    max_age: float | None
    max_memory: int | None
    memory_check_interval: float
    health_interval: float | None
    ping_timeout: float
    idle_timeout: float | None
    min_ready: int | None
    pipeline: int
    shm_threshold: int | None
    restart_backoff: float
    restart_backoff_max: float
    max_start_failures: int
    max_sessions: int
    session_ttl: float | None
    session_hold: float | None
    backend: Backend
    ray: RayOptions | Mapping[str, Any] | None
    on_event: Callable[[WorkerEvent], None] | None
    clock: Callable[[], float]
    stream_window: int
    host_functions: Mapping[str, Callable[..., Any]] | None


#: The option names, from the TypedDict (a test keeps them equal to PoolConfig's fields).
OPTION_NAMES: tuple[str, ...] = tuple(PoolOptions.__annotations__)


@dataclass(frozen=True)
class PoolConfig:
    """Every knob of a pool, as the fronts' options (:class:`PoolOptions`) become it."""

    target: str | None = None
    size: int = 0  # 0 -> os.cpu_count()
    max_size: int | None = None
    start_method: StartMethod = "auto"
    preload: tuple[str, ...] = ()
    python: str | None = None
    command: tuple[str, ...] | None = None
    serializer: SerializerName = "msgpack"
    max_queue: int = 100_000
    queue_timeout: float | None = None
    call_timeout: float | None = None
    start_timeout: float = 60.0
    shutdown_timeout: float = 5.0
    cancel_grace: float = 5.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    max_calls: int | None = None
    max_age: float | None = None
    max_memory: int | None = None
    memory_check_interval: float = 2.0
    health_interval: float | None = 10.0
    ping_timeout: float = 5.0
    idle_timeout: float | None = None
    min_ready: int | None = None
    pipeline: int = 32
    shm_threshold: int | None = DEFAULT_SHM_THRESHOLD
    restart_backoff: float = 0.05
    restart_backoff_max: float = 5.0
    max_start_failures: int = 5
    max_sessions: int = 1000
    session_ttl: float | None = 600.0
    session_hold: float | None = 60.0
    backend: Backend = "local"
    ray: RayOptions | None = None
    on_event: Callable[[WorkerEvent], None] | None = None
    clock: Callable[[], float] = time.monotonic
    stream_window: int = 64
    host_functions: dict[str, Callable[..., Any]] | None = None

    @property
    def min_size(self) -> int:
        return self.size or (os.cpu_count() or 1)

    @property
    def upper_size(self) -> int:
        return max(self.min_size, self.max_size or self.min_size)

    def validate(self) -> None:
        if self.size < 0 or (self.max_size is not None and self.max_size < 1):
            raise ValueError("size and max_size must be positive")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is below size ({self.min_size})")
        _check_choice("start_method", self.start_method, get_args(StartMethod))
        _check_choice("serializer", self.serializer, get_args(SerializerName))
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.pipeline < 1:
            raise ValueError("pipeline must be >= 1")
        if isinstance(self.stream_window, bool) or self.stream_window < 1:
            raise ValueError(f"stream_window must be an int >= 1, not {self.stream_window!r}")
        for name, fn in (self.host_functions or {}).items():
            if not isinstance(name, str) or not callable(fn):
                raise TypeError(f"host_functions maps str names to callables, not {name!r}: {fn!r}")
        if self.shm_threshold is not None and self.shm_threshold < 1:
            raise ValueError("shm_threshold must be >= 1 byte, or None for no shared memory")
        if self.command is not None:
            if not self.command or not all(isinstance(a, str) for a in self.command):
                raise ValueError("command must be a non-empty argv: a list of strings")
            if self.start_method == "fork":
                raise ValueError("command workers are spawned: start_method='fork' cannot apply")
            if self.python is not None or self.preload:
                raise ValueError("python and preload are for Python workers; command replaces them")
        if self.max_sessions < 0:
            raise ValueError("max_sessions must be >= 0")
        if self.session_ttl is not None and self.session_ttl <= 0:
            raise ValueError("session_ttl must be > 0 seconds, or None for no expiry")
        if self.session_hold is not None and self.session_hold < 0:
            raise ValueError("session_hold must be >= 0 seconds, or None to wait for ever")
        if self.min_ready is not None and not 1 <= self.min_ready <= self.min_size:
            raise ValueError(f"min_ready must be between 1 and size ({self.min_size})")
        _check_choice("backend", self.backend, get_args(Backend))
        if self.backend == "ray":
            self._validate_ray()
        elif self.ray is not None:
            raise ValueError("the ray= options apply to backend='ray' only; pass that too")

    def _validate_ray(self) -> None:
        if self.ray is not None:
            self.ray.validate()
        # Each of these needs the host and the worker on one machine.
        local_only = {
            "start_method='fork'": self.start_method == "fork",
            "preload": bool(self.preload),
            "max_memory": self.max_memory is not None,
        }
        for what, used in local_only.items():
            if used:
                raise ValueError(
                    f"{what} needs the workers on this machine; it does not apply with "
                    f"backend='ray' (workers are spawned under Ray actors on the cluster's nodes)"
                )
        if importlib.util.find_spec("ray") is None:
            raise ImportError(
                "backend='ray' needs Ray, which is not installed in this environment: "
                "pip install 'snakeden[ray]'"
            )


def _check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value in choices:
        return
    valid = ", ".join(repr(c) for c in choices)
    raise ValueError(
        f"{option} must be one of {valid}, not {value!r}" + _did_you_mean(value, choices)
    )


def _did_you_mean(value: object, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_config(target: str | None, options: Mapping[str, object]) -> PoolConfig:
    """The config for the fronts' keyword ``options``; unknown names are refused here, since
    ``**options`` is only checked by a type checker, and not every caller runs one."""
    unknown = [name for name in options if name not in OPTION_NAMES]
    if unknown:
        name = unknown[0]
        raise TypeError(
            f"unknown pool option {name!r}{_did_you_mean(name, OPTION_NAMES)}; the options are: "
            f"{', '.join(OPTION_NAMES)} (documented in snakeden.PoolOptions)"
        )
    kwargs: dict[str, Any] = dict(options)
    if "preload" in kwargs:
        if isinstance(kwargs["preload"], str):
            # tuple("numpy") would import "n", "u", ...: a list of names is meant.
            raise TypeError(f"preload takes a list of module names, not {kwargs['preload']!r}")
        kwargs["preload"] = tuple(kwargs["preload"])
    if kwargs.get("command") is not None:
        if isinstance(kwargs["command"], str):
            # tuple("node w.js") would be one argument per character: an argv is meant.
            raise TypeError(
                f"command takes an argv (a list of strings), not {kwargs['command']!r}; "
                f"e.g. shlex.split() it"
            )
        kwargs["command"] = tuple(kwargs["command"])
    if "env" in kwargs:
        kwargs["env"] = dict(kwargs["env"] or {})
    # The pool's own table, which pool.register() adds to.
    kwargs["host_functions"] = dict(kwargs.get("host_functions") or {})
    if isinstance(kwargs.get("ray"), Mapping):
        kwargs["ray"] = _ray_options(kwargs["ray"])
    return PoolConfig(target=target, **kwargs)


def _ray_options(given: Mapping[str, Any]) -> RayOptions:
    names = tuple(RayOptions.__dataclass_fields__)
    for name in given:
        if name not in names:
            raise TypeError(
                f"unknown ray option {name!r}{_did_you_mean(name, names)}; the ray options are: "
                f"{', '.join(names)} (documented in snakeden.RayOptions)"
            )
    return RayOptions(**given)
