"""``snakeden map MODULE[:Class] COMMAND [INPUT]``: JSON Lines in, JSON Lines out, on a pool.

Each input line is one JSON value, the command's argument (``--star``: a JSON array, its
arguments). Each output line is ``{"line": n, "result": ...}`` or ``{"line": n, "error":
{"type": ..., "message": ...}}``, in input order (``--unordered``: as they finish); a failed
line never stops the run, and the exit status is 1 if any line failed, 130 after Ctrl-C.

Shape: a reader thread parses lines and submits them (in chunks of ``--chunksize``) to a
``SyncPool``, at most ``4 x workers`` chunks ahead; the main thread writes results as they are
due. So a stream (stdin) gets its results while it is still being written, and memory stays
bounded whatever the input's length.

A chunk is one frame and fails as a whole (a crash, or one item's exception): its lines are then
run again one by one, so each gets its own result or error. With ``--chunksize`` above 1 the
command should therefore be safe to run twice for the same line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import IO, Any

from snakeden import _progress
from snakeden._errors import RemoteError, SnakedenError, WorkerStartError


@dataclass(slots=True)
class Entry:
    """A chunk of input lines, and what became of them."""

    lines: list[int]  # input line numbers (1-based)
    args: list[tuple[Any, ...]]
    future: Future[Any] | None = None  # None: nothing to run (a line that did not parse)
    errors: dict[int, BaseException] = field(default_factory=dict)  # line -> parse error


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "map",
        help="run a command over JSON Lines on a pool (results as JSON Lines)",
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("target", metavar="MODULE[:Class]", help="the worker module (or class)")
    p.add_argument("command", help="the command to run for each line")
    p.add_argument("input", nargs="?", default="-", help="JSON Lines file (default: stdin)")
    p.add_argument("-o", "--output", default="-", help="where to write (default: stdout)")
    p.add_argument("-w", "--workers", type=int, default=0, help="pool size (default: CPUs)")
    p.add_argument("-t", "--timeout", type=float, default=None, help="per-call timeout (s)")
    p.add_argument("-c", "--chunksize", type=int, default=1, help="lines per call (default 1)")
    p.add_argument("--unordered", action="store_true", help="write results as they finish")
    p.add_argument("--star", action="store_true", help="each line is a JSON array of arguments")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


class _Interrupts:
    """SIGINT as KeyboardInterrupt, except while a record is being written: then after it, so
    the output never ends in half a line."""

    def __init__(self) -> None:
        self.deferred = 0
        self.pending = False

    def handler(self, signum: int, frame: object) -> None:
        if self.deferred:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def defer(self) -> Iterator[None]:
        self.deferred += 1
        try:
            yield
        finally:
            self.deferred -= 1
            if not self.deferred and self.pending:
                self.pending = False
                raise KeyboardInterrupt


def run(ns: argparse.Namespace) -> int:
    from snakeden._syncpool import SyncPool

    if ns.chunksize < 1:
        print("snakeden map: --chunksize must be >= 1", file=sys.stderr)
        return 2
    src: IO[bytes] = sys.stdin.buffer if ns.input == "-" else open(ns.input, "rb")  # noqa: SIM115
    out: IO[str] = sys.stdout if ns.output == "-" else open(ns.output, "w")  # noqa: SIM115
    total = _count_lines(ns.input) if ns.input != "-" else None
    try:
        pool = SyncPool(ns.target, size=ns.workers, call_timeout=ns.timeout)
    except WorkerStartError as exc:
        print(f"snakeden map: the workers could not start: {exc}", file=sys.stderr)
        return 2
    interrupts = _Interrupts()
    old = signal.signal(signal.SIGINT, interrupts.handler)
    job = _Job(pool, ns=ns, src=src, out=out, interrupts=interrupts, total=total)
    try:
        return job.run()
    finally:
        signal.signal(signal.SIGINT, old)
        with contextlib.suppress(Exception):
            out.flush()
        pool.shutdown(wait=True, cancel_futures=True)
        if src is not sys.stdin.buffer:
            src.close()
        if out is not sys.stdout:
            out.close()


def _count_lines(path: str) -> int | None:
    try:
        n = 0
        last = b"\n"
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (last != b"\n")
    except OSError:
        return None


class _Job:
    def __init__(
        self,
        pool: Any,
        *,
        ns: argparse.Namespace,
        src: IO[bytes],
        out: IO[str],
        interrupts: _Interrupts,
        total: int | None,
    ) -> None:
        self.pool = pool
        self.ns = ns
        self.src = src
        self.out = out
        self.interrupts = interrupts
        self.failed = 0
        self.written = 0
        self.stop = threading.Event()
        # Entries in input order (ordered mode) or as they finish (unordered); ("end", n) last.
        self.due: queue.SimpleQueue[Entry | tuple[str, int]] = queue.SimpleQueue()
        self.window = threading.Semaphore(max(1, pool.config.min_size) * 4)
        self.bar = _progress.start(
            True if ns.progress is None else ns.progress, total, f"{ns.command}"
        )
        self.reader_error: BaseException | None = None
        self.current: Entry | None = None  # taken from ``due``, not yet written

    def run(self) -> int:
        reader = threading.Thread(target=self._read, name="snakeden-map-reader", daemon=True)
        reader.start()
        expected: int | None = None
        done = 0
        try:
            while expected is None or done < expected:
                item = self.due.get()
                if isinstance(item, tuple):
                    expected = item[1]
                    continue
                self.current = item
                self._write(item)
                done += 1
                self.window.release()
        except KeyboardInterrupt:
            self._interrupted()
            return 130
        finally:
            if self.bar is not None:
                self.bar.close()
        if self.reader_error is not None:
            print(f"snakeden map: reading the input failed: {self.reader_error}", file=sys.stderr)
            return 2
        return 1 if self.failed else 0

    # --- the reader thread ----------------------------------------------------------------------

    def _read(self) -> None:
        n = 0
        try:
            chunk = Entry([], [])
            for lineno, raw in enumerate(self.src, 1):
                if self.stop.is_set():
                    break
                if not raw.strip():
                    continue  # blank lines are not records
                try:
                    value = json.loads(raw)
                    args = tuple(value) if self.ns.star else (value,)
                    if self.ns.star and not isinstance(value, list):
                        raise TypeError("with --star each line must be a JSON array")
                except (ValueError, TypeError) as exc:
                    # A line that does not parse gets its error in its place, in order.
                    if chunk.lines:
                        n += self._submit(chunk)
                        chunk = Entry([], [])
                    n += self._submit(Entry([lineno], [()], errors={lineno: exc}))
                    continue
                chunk.lines.append(lineno)
                chunk.args.append(args)
                if len(chunk.lines) >= self.ns.chunksize:
                    n += self._submit(chunk)
                    chunk = Entry([], [])
            if chunk.lines and not self.stop.is_set():
                n += self._submit(chunk)
        except BaseException as exc:  # an unreadable input: reported, the rest still written
            self.reader_error = exc
        finally:
            self.due.put(("end", n))

    def _submit(self, entry: Entry) -> int:
        self.window.acquire()
        if self.stop.is_set():
            return 0
        if not entry.errors:
            try:
                if self.ns.chunksize == 1:
                    entry.future = self.pool.submit(self.ns.command, *entry.args[0])
                else:
                    entry.future = self.pool._submit(
                        self.ns.command, tuple(entry.args), {}, batch=True
                    )
            except SnakedenError as exc:  # closed (Ctrl-C), saturated: this entry fails
                entry.errors = dict.fromkeys(entry.lines, exc)
        if self.ns.unordered and entry.future is not None:
            entry.future.add_done_callback(lambda _f: self.due.put(entry))
        else:
            self.due.put(entry)
        return 1

    # --- the main thread ------------------------------------------------------------------------

    def _outcomes(self, entry: Entry) -> list[tuple[int, bool, Any]]:
        """``(line, ok, result or exception)`` for each line of a finished entry."""
        if entry.errors:
            return [(n, False, entry.errors[n]) for n in entry.lines]
        assert entry.future is not None
        try:
            result = entry.future.result()
        except CancelledError:
            raise
        except Exception as exc:
            if len(entry.lines) == 1 or self.stop.is_set():
                return [(n, False, exc) for n in entry.lines]
            return self._one_by_one(entry)
        if self.ns.chunksize == 1:
            return [(entry.lines[0], True, result)]
        return [(n, True, r) for n, r in zip(entry.lines, result, strict=True)]

    def _one_by_one(self, entry: Entry) -> list[tuple[int, bool, Any]]:
        """A chunk failed as a whole: run each of its lines alone to tell which failed."""
        futs = [self.pool.submit(self.ns.command, *a) for a in entry.args]
        out: list[tuple[int, bool, Any]] = []
        for n, f in zip(entry.lines, futs, strict=True):
            try:
                out.append((n, True, f.result()))
            except Exception as exc:
                out.append((n, False, exc))
        return out

    def _write(self, entry: Entry) -> None:
        outcomes = self._outcomes(entry)
        with self.interrupts.defer():
            for n, ok, value in outcomes:
                self.out.write(self._record(n, ok, value) + "\n")
                self.written += 1
            self.current = None
            if self.due.empty():
                self.out.flush()  # nothing else ready: let a reader downstream see it now
        if self.bar is not None:
            self.bar.advance(len(outcomes))

    def _record(self, n: int, ok: bool, value: Any) -> str:
        if ok:
            try:
                return json.dumps({"line": n, "result": value})
            except (TypeError, ValueError) as exc:
                value = TypeError(f"the result is not JSON: {exc}")
        self.failed += 1
        return json.dumps({"line": n, "error": _error(value)})

    def _interrupted(self) -> None:
        """Ctrl-C: stop reading, cancel what has not started, write what is done."""
        self.stop.set()
        self.window.release(1000)  # a reader blocked on the window sees ``stop``
        print("\nsnakeden map: interrupted; finishing the calls already running", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            self.pool.shutdown(wait=True, cancel_futures=True)
            while True:
                if self.current is not None:
                    item: Entry | tuple[str, int] = self.current
                else:
                    try:
                        item = self.due.get_nowait()
                    except queue.Empty:
                        break
                if isinstance(item, tuple):
                    continue
                if item.future is not None and (item.future.cancelled() or not item.future.done()):
                    if self.ns.unordered:
                        continue
                    break  # in order: nothing after the first line that did not run
                self._write(item)
        with contextlib.suppress(Exception):
            self.out.flush()
        print(f"snakeden map: {self.written} lines written", file=sys.stderr)


def _error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, RemoteError):
        return {"type": exc.type_name, "message": exc.remote_message}
    return {"type": type(exc).__name__, "message": str(exc)}
