"""The Python worker runtime: ``python -m snakeden.worker my.module[:Object]``.

The worker reads frames from the fd pair named in ``SNAKEDEN_FDS`` (never stdin/stdout, so a
``print()`` or a C library writing to fd 1 cannot corrupt the channel), runs each CALL, and answers
with RESULT or ERROR. See ``docs/protocol.md``. The runtime is single-threaded on purpose: it is
what a fork template forks, and fork is only safe from a single-threaded process.
"""

from __future__ import annotations

import asyncio
import inspect
import mmap
import os
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from snakeden import _commands, _regions, _shm, _worker_context, _worker_streams
from snakeden import _worker_sessions as _sessions
from snakeden import _worker_tracing as _tracing
from snakeden._protocol import (
    BATCH,
    BY_REFERENCE,
    CONTEXT,
    DEFAULT_MAX_FRAME_SIZE,
    FEATURE_BEGUN,
    FEATURE_CANCEL,
    FEATURE_FLAT,
    FEATURE_HOST_CALL,
    FEATURE_REGIONS,
    FEATURE_SESSION,
    FEATURE_STREAM,
    FEATURE_TRACE,
    FLAT,
    HEADER_SIZE,
    KIND_CALL,
    KIND_ERROR,
    KIND_RESULT,
    NO_REGION,
    PICKLE,
    SESSION,
    SKIPPED,
    STREAM,
    Frame,
    FrameDecoder,
    Kind,
    ProtocolViolation,
    check_frame_size,
    decode_body,
    encode_body,
    encode_header,
    error_body,
    hello_body,
)
from snakeden._worker_batch import encode_flat, run_batch, run_flat
from snakeden._worker_bodies import (
    BadCall,
    _clip,
    _describe,
    _shape_problem,
    _text,
    exception_body,
)
from snakeden._worker_context import CallContext
from snakeden._worker_logging import route_logging
from snakeden._worker_os import (
    EXIT_PROTOCOL_ERROR,
    EXIT_STARTUP_FAILED,
    adopt_host_path,
    die_with_parent,
    enlarge_pipe,
    prepare_process,
    write_all,
)
from snakeden._worker_runtime import Concurrent, Link

__all__ = ["main", "serve"]

_READ_SIZE = 1 << 20


class _Server:
    def __init__(
        self,
        rfd: int,
        wfd: int,
        commands: dict[str, Callable[..., Any]],
        max_frame_size: int,
        worker_id: str = "?",
    ) -> None:
        self.rfd = rfd
        self.worker_id = worker_id
        self.wfd = wfd
        self.commands = commands
        self.max_frame_size = max_frame_size
        self.calls = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.decoder = FrameDecoder(max_frame_size)
        # Anonymous memory, not a bytearray: its pages exist only once a read fills them. A
        # bytearray is zeroed at once, 256 page faults on a new worker's way to its HELLO.
        self.buf = mmap.mmap(-1, _READ_SIZE)
        self.view = memoryview(self.buf)
        # Frames read while a call ran (its Link's) for the serving loop next; None: EOF.
        self.backlog: deque[Frame | None] = deque()
        self.wlock: threading.Lock | None = None  # the concurrent runtime's writers share it
        self.current = 0  # the call running on the single-call path, and its command
        self.current_name = ""
        self.current_flags = 0
        self.concurrency = 1  # snakeden.concurrency(n) of the module: n > 1 runs Concurrent
        self.threaded = False  # the concurrent runtime: calls run on threads
        self.run_tag = os.environ.get("SNAKEDEN_RUN_TAG", "")
        worker_id = os.environ.get("SNAKEDEN_WORKER_ID", "")
        self.shared = _regions.WorkerSide.open(self.run_tag, worker_id)
        # The host's record of which call this worker began (see _shm.begun_path); an older
        # host's slot has no room for the ids to skip: not used.
        path = _shm.begun_path(self.run_tag, worker_id)
        begun = _shm.map_slot(path, create=False) if self.run_tag and worker_id else None
        self.begun = begun if begun is not None and len(begun) >= _shm.SLOT_WORDS else None
        self.skips = _shm.Skips()  # calls cancelled before they began (see _shm.note_skip)
        self.by_pipe = 0  # the running call's NO_REGION flag (see _reply)
        self.link = Link(self)
        _worker_context.fallback = self._current_context

    def send(self, kind: int, ident: int, body: bytes, flags: int = 0) -> None:
        if self.wlock is None:
            write_all(self.wfd, encode_header(kind, ident, len(body), flags), body)
            return
        with self.wlock:
            write_all(self.wfd, encode_header(kind, ident, len(body), flags), body)

    def send_raw(self, data: bytes) -> None:
        if self.wlock is None:
            write_all(self.wfd, data)
            return
        with self.wlock:
            write_all(self.wfd, data)

    def _current_context(self) -> CallContext | None:
        """``snakeden.context()`` in a call on the single-call path: made when first asked."""
        if not self.current:
            return None
        return self.link.context(self.current, self.current_name, self.current_flags)

    def send_error(self, ident: int, flags: int, **fields: Any) -> None:
        self.send_error_body(ident, flags, error_body(**fields))

    def send_error_body(self, ident: int, flags: int, body: dict[str, Any]) -> None:
        """Send an ERROR that fits in one frame: an over-size frame would make the host kill a
        healthy worker instead of reporting the error (its texts can echo the caller's input)."""
        flags &= PICKLE
        room = self.max_frame_size - HEADER_SIZE
        data = encode_body(body, flags)
        if len(data) > room:
            # Keep what says what went wrong; drop what only helps to find out why.
            body = {**body, "traceback": "", "message": _clip(body["message"], room // 2)}
            for extra in ("commands", "args", "attrs", "pickled"):
                body.pop(extra, None)
            data = encode_body(body, flags)
        self.send(KIND_ERROR, ident, data, flags)

    def run(self) -> int:
        if self.concurrency > 1:
            return Concurrent(self, self.concurrency).serve()
        decoder = self.decoder
        buf = self.buf
        view = self.view
        backlog = self.backlog
        contexts = self.link.calls
        skips = self.skips
        while True:
            if not backlog:
                n = os.readv(self.rfd, [buf])
                if n == 0:
                    return 0  # the host closed the channel: it is gone or wants us gone
                try:
                    backlog.extend(decoder.feed(view[:n]))
                except ProtocolViolation as exc:
                    print(f"snakeden worker: bad frame from host: {exc}", file=sys.stderr)
                    return EXIT_PROTOCOL_ERROR
            while backlog:
                frame = backlog.popleft()
                if frame is None:
                    return 0  # end of file, read while a call ran
                if frame.kind == KIND_CALL:
                    begun = self.begun
                    if begun is not None:
                        begun[0] = frame.id  # before anything of the call can happen
                        if frame.flags & NO_REGION:  # behind another: the host may be
                            _shm.fence()  # taking it back now, and must see the store above
                        if (skips.ids or skips.count != begun[1]) and skips.take(begun, frame.id):
                            # Cancelled while it waited behind another call, or taken back.
                            self.send_error(
                                frame.id, 0, kind="cancelled", type_name="", message=SKIPPED
                            )
                            continue
                    self.current = frame.id
                    self.current_flags = frame.flags
                    if frame.flags & SESSION:
                        _sessions.run_call(frame, self.handle_call, self.send_error)
                    else:
                        self.handle_call(frame)
                    self.current = 0
                    if contexts:
                        contexts.clear()  # the call asked for its context: done with it
                elif frame.kind in (Kind.SESSION_OPEN, Kind.SESSION_CLOSE):
                    _sessions.on_frame(frame)
                elif frame.kind == Kind.PING:
                    pong = {"pid": os.getpid(), "calls": self.calls}
                    self.send(Kind.PONG, frame.id, encode_body(pong))
                elif frame.kind == Kind.SHUTDOWN:
                    return 0
                elif frame.kind in _LATE:
                    # Calls run one at a time, so by the time we read a CANCEL, CREDIT or
                    # HOST_REPLY here its call has finished and been answered (a running call
                    # reads its own through its Link); the host discards that answer.
                    continue
                else:
                    print(f"snakeden worker: unknown frame kind {frame.kind}", file=sys.stderr)
                    return EXIT_PROTOCOL_ERROR

    def handle_call(self, frame: Frame, ctx: Any = None) -> None:
        flags = frame.flags & PICKLE
        self.by_pipe = frame.flags & NO_REGION  # sent behind another call: see _reply
        # "decode" errors go out in MessagePack whatever the call's codec (docs/protocol.md
        # §5): the host can read them even when the call's codec is what failed.
        try:
            body = decode_body(frame) if self.shared is None else self.shared.decode(frame)
        except Exception as exc:
            message = f"the worker could not decode the call: {_text(exc)}"
            self.send_error(
                frame.id, 0, kind="decode", type_name=type(exc).__name__, message=message
            )
            return
        if not frame.flags & _FEATURES and ctx is None and type(body) is list and len(body) == 3:
            # A plain call (no feature flag, the host's exact types) skips what cannot apply.
            name, args, kwargs = body
            if type(name) is str and type(args) is list and type(kwargs) is dict and not kwargs:
                fn = self.commands.get(name)
                if fn is not None:
                    self.calls += 1
                    self.current_name = name  # for snakeden.context(), made on demand
                    if self.threaded:
                        _worker_context._current.get().command = name
                    try:
                        result = self._invoke(fn, args, kwargs)
                    except BaseException as exc:  # as below: the call fails, not the worker
                        self.send_error_body(frame.id, flags, self._exception_body(exc, flags))
                        return
                    self._reply(frame.id, flags, result, name)
                    return
        context = None
        if frame.flags & CONTEXT and type(body) is list and len(body) == 4:
            # The caller's trace context (docs/protocol.md §6.2): taken off, the rest is an
            # ordinary call. A CONTEXT call with three elements simply has none.
            context = body.pop()
            if type(context) is not dict:
                what = _describe(context)
                self.send_error(
                    frame.id,
                    0,
                    kind="decode",
                    type_name="TypeError",
                    message=f"the context of a CALL must be a map, got {what}",
                )
                return
        problem = _shape_problem(frame, body)
        if problem is not None:
            # Calling with it anyway would mis-route the call (args "ab" taken as two
            # arguments) or fail inside the runtime rather than as this call's error.
            self.send_error(frame.id, 0, kind="decode", type_name="TypeError", message=problem)
            return
        name, args, kwargs = body
        if ctx is not None:
            ctx.command = name  # a session call's context (_worker_sessions.run_call)
            if ctx._host is None:  # give it the channel too: cancellation, host calls
                ctx._host, ctx._flags = self.link, flags
                self.link.calls[frame.id] = ctx
                if frame.flags & STREAM:
                    self.link.gate(frame.id)  # the gate before the claim: the CREDIT finds it
                else:
                    self.link.claim(frame.id)
        try:
            fn = self._lookup(name, frame.flags)
        except Exception as exc:  # importing a reference can raise anything
            why = _text(exc)
            if not isinstance(exc, LookupError):
                why = f"cannot resolve {name!r} in the worker: {type(exc).__name__}: {why}"
            self.send_error(
                frame.id,
                flags,
                kind="unknown_command",
                type_name=type(exc).__name__,
                message=why,
                commands=sorted(self.commands),
            )
            return
        self.calls += 1
        self.current_name = name  # for snakeden.context(), made on demand
        if self.threaded:
            _worker_context._current.get().command = name
        if frame.flags & STREAM:
            _worker_streams.run_stream(self, frame.id, flags, fn, args, kwargs)
            return
        if context is not None:
            self._run_traced(frame, flags, fn, name, args, kwargs, context)
            return
        if frame.flags & BATCH:
            self._reply(frame.id, *self._run_batch(fn, args, kwargs, frame.flags), name, batch=True)
            return
        try:
            result = self._invoke(fn, args, kwargs)
        except BaseException as exc:  # sys.exit() in a command fails the call, not the worker
            self.send_error_body(frame.id, flags, self._exception_body(exc, flags))
            return
        self._reply(frame.id, flags, result, name)

    def _run_traced(  # noqa: PLR0917 - handle_call's locals, passed on as they are
        self,
        frame: Frame,
        flags: int,
        fn: Callable[..., Any],
        name: str,
        args: Any,
        kwargs: Any,
        context: dict[Any, Any],
    ) -> None:
        """``handle_call``'s last step, inside the caller's trace context. A path of its own, so
        that a call without a context runs exactly the code it ran before tracing existed."""
        span = _tracing.start(context, name, self.worker_id)
        if span is None:  # no OpenTelemetry here, or a context it cannot read: ignore it
            if frame.flags & BATCH:
                self._reply(
                    frame.id, *self._run_batch(fn, args, kwargs, frame.flags), name, batch=True
                )
                return
            try:
                result = self._invoke(fn, args, kwargs)
            except BaseException as exc:
                self.send_error_body(frame.id, flags, self._exception_body(exc, flags))
                return
            self._reply(frame.id, flags, result, name)
            return
        if frame.flags & BATCH:
            reply_flags, results = self._run_batch(fn, args, kwargs, frame.flags)
            failed = not reply_flags & FLAT and any(not ok for ok, _ in results)
            _tracing.end(span, "failed" if failed else "ok")
            self._reply(frame.id, reply_flags, results, name, batch=True)
            return
        try:
            result = self._invoke(fn, args, kwargs)
        except BaseException as exc:
            _tracing.end(span, "failed", exc)
            self.send_error_body(frame.id, flags, self._exception_body(exc, flags))
            return
        _tracing.end(span, "ok")
        self._reply(frame.id, flags, result, name)

    def _lookup(self, name: str, frame_flags: int) -> Callable[..., Any]:
        if frame_flags & BY_REFERENCE:
            return _commands.resolve_reference(name)
        fn = self.commands.get(name)
        if fn is None:
            raise LookupError(f"unknown command {name!r}")
        return fn

    def _run_batch(
        self, fn: Callable[..., Any], batch: Any, kwargs: Any, flags: int
    ) -> tuple[int, list[Any]]:
        """``(reply flags, results)`` of a BATCH call (see _worker_batch)."""

        def error(exc: BaseException) -> dict[str, Any]:
            return self._exception_body(self._as_bad_call(exc), flags)

        if flags & FLAT:
            flat, results = run_flat(fn, batch, kwargs, self._await, error)
            return (flags & PICKLE) | (FLAT if flat else 0), results
        return flags & PICKLE, run_batch(fn, batch, kwargs, self._await, error)

    def _invoke(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        try:
            bound = fn(*args, **kwargs)
        except TypeError as exc:
            bad = self._as_bad_call(exc)
            if bad is exc:
                raise  # raised inside the command: the user's own TypeError, untouched
            raise bad from None
        # isawaitable() asks an ABC (about a thousand instructions); no builtin value is one.
        if type(bound) not in _NOT_AWAITABLE and inspect.isawaitable(bound):
            return self._await(bound)
        return bound

    @staticmethod
    def _as_bad_call(exc: BaseException) -> BaseException:
        """A TypeError raised while binding arguments (not inside the command) is the caller's
        mistake: its traceback ends in the frame that made the call."""
        if (
            isinstance(exc, TypeError)
            and exc.__traceback__ is not None
            and exc.__traceback__.tb_next is None
        ):
            return BadCall(str(exc))
        return exc

    def _await(self, awaitable: Any) -> Any:
        ident = _current_id() if self.link.threaded else self.current
        return self.link.run_async(awaitable, ident)

    def _exception_body(self, exc: BaseException, flags: int) -> dict[str, Any]:
        return exception_body(exc, flags, self.max_frame_size)

    def _reply(
        self, ident: int, flags: int, result: Any, name: str, *, batch: bool = False
    ) -> None:
        try:
            shared = self.shared
            t = type(result)
            if batch and flags & FLAT:
                data = encode_flat(result, flags & PICKLE, self._await)
            elif (
                shared is None
                or batch  # a batch's chunks may be in flight several at once
                or self.by_pipe  # sent behind another call: a reply may be unread in the region
                or t in _NO_BUFFERS
                or (t is bytes and len(result) < shared.threshold)
            ):
                data = encode_body(result, flags)
            else:
                data = shared.encode(result, flags)
            if len(data) + HEADER_SIZE > self.max_frame_size:
                check_frame_size(len(data), self.max_frame_size)
        except BaseException as exc:  # even SystemExit from a __reduce__, as ProcessPoolExecutor
            codec = "pickle" if flags else "MessagePack"
            self.send_error(
                ident,
                flags,
                kind="encode",
                type_name=type(exc).__name__,
                message=_worker_streams.hint(result, name)
                or (
                    f"the result of {name!r} (a {type(result).__name__}) could not be sent "
                    f"with {codec}: {type(exc).__name__}: {_text(exc)}. Return plain data "
                    f"(None, bool, int, float, str, bytes, list, tuple, dict), use "
                    f"serializer='pickle', or return less"
                ),
            )
            return
        self.send(KIND_RESULT, ident, data, flags)


_LATE = (Kind.CANCEL, Kind.CREDIT, Kind.HOST_REPLY)
# Flags of a CALL that take handle_call's general path.
_FEATURES = BY_REFERENCE | BATCH | CONTEXT | STREAM | FLAT
# Results that hold no buffer for a shared-memory region, whatever their size.
_NO_BUFFERS = frozenset({bool, int, float, str, type(None)})
_NOT_AWAITABLE = _NO_BUFFERS | {bytes, list, dict, tuple}


def _current_id() -> int:
    return _worker_context._current.get().call_id


def serve(
    target: str | None,
    *,
    rfd: int,
    wfd: int,
    worker_id: str,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    preloaded: tuple[Any, Any] | None = None,
) -> int:
    """Set the worker up, say HELLO, and serve calls until told to stop. Returns an exit code.

    ``preloaded`` is ``(module, object)`` already imported by a fork template; only the
    per-worker set-up runs here then.
    """
    for fd in (rfd, wfd):
        os.set_inheritable(fd, False)  # processes the user's code starts must not hold the channel
        os.set_blocking(fd, True)
    enlarge_pipe(wfd)
    try:
        if target is None:
            commands: dict[str, Callable[..., Any]] = {}
        else:
            module, obj = preloaded if preloaded is not None else import_target(target)
            commands = _commands.instantiate(module, obj)
    except BaseException as exc:
        tb = "".join(traceback.format_exception(exc))
        body = error_body(
            kind="startup",
            type_name=type(exc).__qualname__,
            message=str(exc),
            traceback=tb,
        )
        try:
            data = encode_body(body)
            write_all(wfd, encode_header(Kind.ERROR, 0, len(data)), data)
        except OSError:
            # Only when the host cannot get the report: printed as well, the traceback would
            # reach the user twice (the host logs our stderr).
            print(f"snakeden worker {worker_id}: start-up failed\n{tb}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    server = _Server(rfd, wfd, commands, max_frame_size, worker_id)
    server.concurrency = _commands.declared_concurrency()
    if server.concurrency > 1:
        server.shared = None  # a region holds one message: calls that overlap go by pipe
    # Advertised only where OpenTelemetry can be imported: a host never sends a context to a
    # worker that would have to ignore it.
    traced = _tracing.available()
    hello = hello_body(
        pid=os.getpid(),
        runtime=f"python {sys.version.split()[0]}",
        commands=sorted(commands),
        worker_id=worker_id,
        codecs=["msgpack", "pickle"],
        features=[
            *([FEATURE_TRACE] if traced else []),
            *([FEATURE_BEGUN] if server.begun is not None else []),
            FEATURE_STREAM,
            FEATURE_CANCEL,
            FEATURE_HOST_CALL,
            FEATURE_SESSION,
            *([FEATURE_REGIONS] if server.shared is not None else []),
            FEATURE_FLAT,
        ],
        concurrency=server.concurrency,
    )
    try:
        server.send(Kind.HELLO, 0, encode_body(hello))
        # What the HELLO does not depend on comes after it, off the host's wait for a new
        # worker (a replacement's, after a crash). No user code runs in between, so this is
        # still "after the module's set-up" for route_logging.
        route_logging()
        if traced:
            _tracing.preload()
        return server.run()
    except BrokenPipeError:
        return 0  # the host closed its end of the channel: like EOF, nobody is left to answer
    finally:
        _tracing.flush()
        if server.loop is not None:
            # Closed here, not by the garbage collector at exit, which may run it after the
            # fds it watches are gone and print a traceback nobody asked for.
            server.loop.close()


def import_target(target: str) -> tuple[Any, Any]:
    """Import the target's module; when the module itself is missing (not a module it
    imports), say where we looked and where the host found it."""
    try:
        return _commands.import_target(target)
    except ModuleNotFoundError as exc:
        name = _commands.split_target(target)[0]
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise
        origin = os.environ.get("SNAKEDEN_TARGET_ORIGIN")
        found = f"the host found it at {origin}" if origin else "the host cannot find it either"
        raise ModuleNotFoundError(
            f"module {name!r} not found in the worker; the worker's sys.path is {sys.path}; "
            f"{found}",
            name=exc.name,
        ) from None


def env_settings() -> tuple[int, int, str, int, int | None]:
    try:
        rfd_s, wfd_s = os.environ["SNAKEDEN_FDS"].split(",")
    except (KeyError, ValueError):
        print(
            "snakeden.worker is started by a snakeden pool, which passes the channel in "
            "SNAKEDEN_FDS='<read_fd>,<write_fd>'; it is not meant to be run by hand",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    host = os.environ.get("SNAKEDEN_HOST_PID")
    return (
        int(rfd_s),
        int(wfd_s),
        os.environ.get("SNAKEDEN_WORKER_ID", "?"),
        int(os.environ.get("SNAKEDEN_MAX_FRAME", DEFAULT_MAX_FRAME_SIZE)),
        int(host) if host else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    rfd, wfd, worker_id, max_frame, host_pid = env_settings()
    die_with_parent(host_pid)
    prepare_process()
    adopt_host_path()
    target = next((a for a in args if not a.startswith("--")), None)
    return serve(target, rfd=rfd, wfd=wfd, worker_id=worker_id, max_frame_size=max_frame)


if __name__ == "__main__":
    sys.exit(main())
