"""The conformance kit: drive any worker program through the protocol, case by case.

``python -m snakeden.conformance -- <argv>`` (or ``snakeden conformance -- <argv>``) starts the
program as a pool would (its own process group, the channel on two pipes named in
``SNAKEDEN_FDS``, stdout and stderr captured) and checks what ``docs/protocol.md`` requires. The
worker must serve the conformance contract (§11 of the spec): ``echo(value)``, ``add(a, b)``,
``fail(message)``, ``sleep(ms)``, ``shout(text)`` and ``blob(n)``.

The frame-level cases come from ``vectors.json``, the language-neutral file the Node runtime's
tests read as well; the cases that need timing or process control (handshake, split and
coalesced frames, ping during a call, cancel, output, shutdown, EOF) are written here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import select
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from snakeden._process import start_child
from snakeden._protocol import (
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    Kind,
    ProtocolViolation,
    encode_body,
    encode_frame,
)

__all__ = ["CaseResult", "load_vectors", "run_kit"]

VECTORS_PATH = pathlib.Path(__file__).with_name("vectors.json")
CONTRACT = ("echo", "add", "fail", "sleep", "shout", "blob")
TIMEOUT = 5.0  # per expected frame or exit; generous for a loaded CI machine


class CaseFailed(Exception):
    """A case's reason for failing, in words for the person writing the worker."""


@dataclass
class CaseResult:
    name: str
    ok: bool
    reason: str = ""
    skipped: bool = False


def load_vectors(path: pathlib.Path = VECTORS_PATH) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _tuple_hook(code: int, data: bytes) -> Any:
    if code == 43:  # a tuple (spec §5.1.1): compared equal to an array of the same items
        return list(msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_tuple_hook))
    return msgpack.ExtType(code, data)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_tuple_hook)


def same(a: Any, b: Any) -> bool:
    """Equality of decoded values, with NaN equal to NaN and int/float kept apart."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b) and not (isinstance(a, int | float) and isinstance(b, int | float)):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int) != isinstance(b, int):
        return False  # 3 and 3.0 differ on the wire: a float came back for an int
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class Session:
    """One run of the worker program, with the kit as its host."""

    def __init__(
        self, argv: Sequence[str], *, max_frame: int | None = None, cwd: str | None = None
    ):
        self.argv = list(argv)
        self.pid_alive = True
        w2h_r, w2h_w = os.pipe()
        h2w_r, h2w_w = os.pipe()
        self.rfd, self.wfd = w2h_r, h2w_w
        self.run_tag = f"{os.getpid()}-conformance-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ)
        env.update(
            {
                "SNAKEDEN_FDS": f"{h2w_r},{w2h_w}",
                "SNAKEDEN_WORKER_ID": "conformance",
                "SNAKEDEN_MAX_FRAME": str(max_frame or 256 * 1024 * 1024),
                "SNAKEDEN_HOST_PID": str(os.getpid()),
                "SNAKEDEN_RUN_TAG": self.run_tag,
            }
        )
        self.proc, out_r, err_r = start_child(self.argv, env=env, cwd=cwd, child_fds=(h2w_r, w2h_w))
        self.decoder = FrameDecoder(1 << 31)
        self.pending: list[Frame] = []
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._readers = [
            threading.Thread(target=self._drain, args=(fd, buf), daemon=True)
            for fd, buf in ((out_r, self.stdout), (err_r, self.stderr))
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(fd: int, buf: bytearray) -> None:
        try:
            while chunk := os.read(fd, 65536):
                buf += chunk
        finally:
            os.close(fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def close_input(self) -> None:
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1

    def recv(self, timeout: float | None = None, what: str = "a frame") -> Frame:
        """The next frame; CaseFailed on timeout or end of file, saying what was seen."""
        timeout = TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise CaseFailed(self._nothing(what, timeout))
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise CaseFailed(
                    f"end of file on the channel while waiting for {what}" + self.tail()
                )
            try:
                self.pending.extend(self.decoder.feed(chunk))
            except ProtocolViolation as exc:
                raise CaseFailed(f"the worker sent bytes that are not a frame: {exc}") from None
        return self.pending.pop(0)

    def _nothing(self, what: str, timeout: float) -> str:
        size = self.decoder.pending_frame_size()
        if size is not None:
            return (
                f"no complete frame within {timeout}s while waiting for {what}: "
                f"{self.decoder.buffered} bytes arrived, but their length prefix announces a "
                f"{size}-byte frame (wrong length prefix?)"
            )
        return f"nothing on the channel within {timeout}s while waiting for {what}" + self.tail()

    def quiet(self, timeout: float = 0.2) -> Frame | None:
        """A frame that arrives within ``timeout``, if any (to check for unwanted replies)."""
        with contextlib.suppress(CaseFailed):
            return self.recv(timeout)
        return None

    def wait_exit(self, timeout: float | None = None) -> int:
        timeout = TIMEOUT if timeout is None else timeout
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CaseFailed(f"the worker did not exit within {timeout}s") from None

    def tail(self, n: int = 5) -> str:
        lines = bytes(self.stderr).decode(errors="replace").splitlines()[-n:]
        return ("; its last stderr lines: " + " | ".join(lines)) if lines else ""

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.close_input()
        os.close(self.rfd)
        for t in self._readers:
            t.join(5)


@contextlib.contextmanager
def session(argv: Sequence[str], **kw: Any) -> Iterator[Session]:
    s = Session(argv, **kw)
    try:
        yield s
    finally:
        s.close()


def handshake(s: Session) -> dict[str, Any]:
    try:
        frame = s.recv(TIMEOUT * 2, "HELLO")
    except CaseFailed as exc:
        hint = _frames_on_stdout(s)
        raise CaseFailed(f"no HELLO: {exc}{hint}") from None
    if frame.kind == Kind.ERROR:
        body = _decode(frame, "the start-up ERROR")
        raise CaseFailed(f"the worker failed to start: {short(body, 400)}")
    if frame.kind != Kind.HELLO:
        raise CaseFailed(f"the first frame is kind {frame.kind}, not HELLO (1)")
    if frame.id != 0 or frame.flags != 0:
        raise CaseFailed(f"HELLO must have id 0 and flags 0, not id {frame.id} flags {frame.flags}")
    hello = _decode(frame, "HELLO")
    if not isinstance(hello, dict):
        raise CaseFailed(f"the HELLO body is not a map: {short(hello)}")
    return hello


def _frames_on_stdout(s: Session) -> str:
    data = bytes(s.stdout)
    idx = data.find(b"\x01\x00\x00\x00\x00\x00")  # kind HELLO, flags 0, id 0
    if idx >= 4 and struct.unpack(">I", data[idx - 4 : idx])[0] >= 6:
        return (
            "; a HELLO frame arrived on stdout instead: frames must go to the write fd of "
            "SNAKEDEN_FDS, never to stdout"
        )
    return ""


def _decode(frame: Frame, what: str) -> Any:
    try:
        return unpack(frame.body)
    except Exception as exc:
        raise CaseFailed(
            f"the {what} body is not one complete MessagePack value ({exc}); a wrong length "
            f"prefix cuts or extends it"
        ) from None


def check_hello(hello: dict[str, Any], pid: int) -> None:
    problems = []
    if hello.get("protocol") != PROTOCOL_VERSION:
        problems.append(f"protocol is {hello.get('protocol')!r}, not {PROTOCOL_VERSION}")
    if hello.get("pid") != pid:
        problems.append(f"pid is {hello.get('pid')!r}, the process is {pid}")
    if hello.get("worker_id") != "conformance":
        problems.append(f"worker_id is {hello.get('worker_id')!r}, not SNAKEDEN_WORKER_ID")
    if not isinstance(hello.get("runtime"), str):
        problems.append("runtime is not a str")
    commands = hello.get("commands")
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        problems.append("commands is not an array of str")
    else:
        missing = [c for c in CONTRACT if c not in commands]
        if missing:
            problems.append(f"the conformance contract commands {missing} are not served")
    codecs = hello.get("codecs", ["msgpack"])
    if not isinstance(codecs, list) or "msgpack" not in codecs:
        problems.append(f'codecs {codecs!r} lacks "msgpack"')
    if problems:
        raise CaseFailed("HELLO: " + "; ".join(problems))


def match(frame: Frame, want: dict[str, Any]) -> str | None:
    """Why ``frame`` does not match the expected frame ``want`` (a vectors.json entry)."""
    kinds = want["kind"] if isinstance(want["kind"], list) else [want["kind"]]
    if frame.id != want["id"]:
        return f"expected a reply with id {want['id']}, got kind {frame.kind} with id {frame.id}"
    if frame.kind not in kinds:
        got = _decode(frame, f"kind {frame.kind}") if frame.body else None
        return f"id {frame.id}: expected kind {kinds}, got kind {frame.kind} {short(got)}"
    if "flags" in want and frame.flags != want["flags"]:
        return f"id {frame.id}: flags {frame.flags}, expected {want['flags']}"
    body: Any = _decode(frame, f"kind {frame.kind}") if frame.body else None
    if frame.kind == Kind.RESULT and "batch" in want:
        return _match_batch(body, want["batch"])
    if frame.kind == Kind.RESULT and "body" in want:
        expected = unpack(bytes.fromhex(want["body"]))
        if not same(body, expected):
            return f"id {frame.id}: result {short(body)}, expected {short(expected)}"
    if frame.kind == Kind.ERROR:
        why = _match_error(body, want.get("error", {}))
        if why:
            return f"id {frame.id}: {why}"
        for c in want.get("commands_include", ()):
            if c not in (body.get("commands") or ()):
                return f"id {frame.id}: unknown_command ERROR's commands lack {c!r}"
    if frame.kind == Kind.PONG and not (
        isinstance(body, dict)
        and isinstance(body.get("pid"), int)
        and isinstance(body.get("calls"), int)
    ):
        return f"PONG body {short(body)} lacks int pid and calls"
    return None


def _match_error(body: Any, want: dict[str, Any]) -> str | None:
    if not isinstance(body, dict):
        return f"ERROR body {short(body)} is not a map"
    for key in ("kind", "type", "message", "traceback"):
        if not isinstance(body.get(key), str):
            return f"ERROR body lacks a str {key!r}: {short(body)}"
    for key, value in want.items():
        if body.get(key) != value:
            return f"ERROR {key} is {body.get(key)!r}, expected {value!r} (body {short(body)})"
    return None


def _match_batch(body: Any, want: list[dict[str, Any]]) -> str | None:
    if not isinstance(body, list) or len(body) != len(want):
        return f"BATCH result {short(body)} is not {len(want)} [ok, value] pairs"
    for i, (item, w) in enumerate(zip(body, want, strict=True)):
        if not (isinstance(item, list) and len(item) == 2 and item[0] is w["ok"]):
            return f"BATCH item {i} is {short(item)}, expected ok={w['ok']}"
        if not w["ok"]:
            why = _match_error(item[1], w["error"])
            if why:
                return f"BATCH item {i}: {why}"
    return None


def expect(s: Session, wants: list[dict[str, Any]], any_order: bool = False) -> None:
    left = list(wants)
    while left:
        frame = s.recv(TIMEOUT, f"the reply with id {left[0]['id']}")
        target = next((w for w in left if w["id"] == frame.id), left[0]) if any_order else left[0]
        why = match(frame, target)
        if why:
            raise CaseFailed(why)
        left.remove(target)


def _frames(hexes: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


Case = tuple[str, Callable[[], None]]


def run_kit(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case against the worker program ``argv``; one result per case, in order."""
    vectors = load_vectors()
    results: list[CaseResult] = []

    def record(name: str, fn: Callable[[], None], skip: str | None = None) -> bool:
        if skip:
            res = CaseResult(name, True, skip, skipped=True)
        else:
            try:
                fn()
                res = CaseResult(name, True)
            except CaseFailed as exc:
                res = CaseResult(name, False, str(exc))
            except OSError as exc:  # e.g. EPIPE: the worker died under the case
                res = CaseResult(name, False, f"{type(exc).__name__}: {exc}")
        results.append(res)
        if on_result is not None:
            on_result(res)
        return res.ok

    # The main session: handshake, then every vector that leaves the worker serving.
    with session(argv, cwd=cwd) as s:
        hello: dict[str, Any] = {}

        def do_handshake() -> None:
            hello.update(handshake(s))
            check_hello(hello, s.proc.pid)

        if not record("handshake", do_handshake) and not hello:
            return results  # no HELLO at all: nothing else can be checked
        codecs = hello.get("codecs", ["msgpack"])
        for vec in [*vectors["values"], *vectors["serving"]]:
            skip = vec.get("skip_if_codec")
            skipped = f"the worker offers {skip}" if skip and skip in codecs else None

            def run_vector(vec: dict[str, Any] = vec) -> None:
                for data in _frames(vec["send"]):
                    s.write(data)
                expect(s, vec["expect"], vec.get("order") == "any")

            record(vec["name"], run_vector, skipped)

        features = hello.get("features") or []
        for feature, vecs in vectors.get("features", {}).items():
            for vec in vecs:

                def run_feature(vec: dict[str, Any] = vec) -> None:
                    for data in _frames(vec["send"]):
                        s.write(data)
                    expect(s, vec["expect"], vec.get("order") == "any")

                without = None if feature in features else f"HELLO does not list {feature!r}"
                record(vec["name"], run_feature, without)

        add = bytes.fromhex(vectors["serving"][0]["send"][0])  # call.add, id from the vectors
        add_id = vectors["serving"][0]["expect"][0]["id"]

        def split_every_byte() -> None:
            for cut in range(1, len(add)):
                s.write(add[:cut])
                # Not a synchronisation: a pause so the two pieces reach the worker in two reads.
                time.sleep(0.002)
                s.write(add[cut:])
                frame = s.recv(TIMEOUT, f"the reply to a CALL split after byte {cut}")
                why = match(frame, {"kind": 3, "id": add_id, "body": "03"})
                if why:
                    raise CaseFailed(f"split after byte {cut}: {why}")

        def one_byte_at_a_time() -> None:
            for b in add:
                s.write(bytes([b]))
                time.sleep(0.001)  # as above: one read per byte, as far as the kernel allows
            expect(s, [{"kind": 3, "id": add_id, "body": "03"}])

        def coalesced() -> None:
            stream = b"".join(
                bytes.fromhex(v["send"][0]) for v in vectors["values"][:20]
            ) + encode_frame(Kind.PING, 7777)
            s.write(stream)
            wants = [v["expect"][0] for v in vectors["values"][:20]]
            expect(s, [*wants, {"kind": 6, "id": 7777, "pong": True}], any_order=True)

        def ping_during_call() -> None:
            s.write(encode_frame(Kind.CALL, 8001, encode_body(["sleep", [300], {}])))
            s.write(encode_frame(Kind.PING, 8002))
            expect(
                s,
                [{"kind": 3, "id": 8001, "body": "cd012c"}, {"kind": 6, "id": 8002, "pong": True}],
                any_order=True,
            )

        def cancel() -> None:
            s.write(encode_frame(Kind.CALL, 8101, encode_body(["sleep", [1500], {}])))
            s.write(encode_frame(Kind.CANCEL, 8101))
            frame = s.recv(1.5 + TIMEOUT, "the one reply to the cancelled call")
            why = match(frame, {"kind": [3, 4], "id": 8101, "body": "cd05dc"})
            if why:
                raise CaseFailed(why)
            if frame.kind == Kind.ERROR:
                body = unpack(frame.body)
                if body.get("kind") not in ("cancelled", "user"):
                    raise CaseFailed(f"a cancelled call answered {short(body)}")
            extra = s.quiet(0.3)
            if extra is not None:
                raise CaseFailed(f"a second reply (kind {extra.kind}, id {extra.id}) after CANCEL")

        def output() -> None:
            text = "conformance \x00\x00\x00\x06\x05\x00 line"
            s.write(encode_frame(Kind.CALL, 8201, encode_body(["shout", [text], {}])))
            expect(s, [{"kind": 3, "id": 8201, "body": encode_body(text).hex()}])
            s.write(encode_frame(Kind.PING, 8202))  # the channel still in step after the output
            expect(s, [{"kind": 6, "id": 8202, "pong": True}])
            for name, buf in (("stdout", s.stdout), ("stderr", s.stderr)):
                deadline = time.monotonic() + TIMEOUT
                while text.encode() not in buf and time.monotonic() < deadline:
                    time.sleep(0.01)  # the drain thread's copy, not the worker: polled
                if text.encode() not in buf:
                    raise CaseFailed(f"shout's text did not appear on {name}")

        for name, fn in (
            ("framing.split_every_byte", split_every_byte),
            ("framing.one_byte_at_a_time", one_byte_at_a_time),
            ("framing.coalesced", coalesced),
            ("ping.during_long_call", ping_during_call),
            ("cancel.in_flight", cancel),
            ("output.stdout_stderr", output),
        ):
            record(name, fn)

        def no_frames_on_stdout() -> None:
            hint = _frames_on_stdout(s)
            if hint:
                raise CaseFailed(hint.lstrip("; "))

        record("output.no_frames_on_stdout", no_frames_on_stdout)

    # Cases that end the worker: each on its own run.
    for vec in vectors["alone"]:

        def run_alone(vec: dict[str, Any] = vec) -> None:
            with session(argv, cwd=cwd, max_frame=vec.get("max_frame")) as s:
                handshake(s)
                for data in _frames(vec["send"]):
                    s.write(data)
                expect(s, vec["expect"])
                if "exit" in vec:
                    code = s.wait_exit()
                    if vec["exit"] == "zero" and code != 0:
                        raise CaseFailed(f"exit status {code}, expected 0" + s.tail())
                    if vec["exit"] == "nonzero" and code == 0:
                        raise CaseFailed("exit status 0 after a protocol violation")

        record(vec["name"], run_alone)

    def eof() -> None:
        with session(argv, cwd=cwd) as s:
            handshake(s)
            s.close_input()
            code = s.wait_exit()
            if code != 0:
                raise CaseFailed(f"exit status {code} after EOF on its read fd, expected 0")

    record("eof.exits", eof)
    return results


def format_report(argv: Sequence[str], results: list[CaseResult]) -> str:
    lines = [f"snakeden conformance (protocol {PROTOCOL_VERSION}): {' '.join(argv)}"]
    for r in results:
        status = "SKIP" if r.skipped else "PASS" if r.ok else "FAIL"
        lines.append(f"{status} {r.name}" + (f": {r.reason}" if r.reason else ""))
    failed = sum(not r.ok for r in results)
    passed = sum(r.ok and not r.skipped for r in results)
    lines.append(f"{passed} passed, {failed} failed, {sum(r.skipped for r in results)} skipped")
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    global TIMEOUT
    argv = list(sys.argv[1:] if args is None else args)
    ours, worker = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else ([], argv)
    )
    parser = argparse.ArgumentParser(
        prog="snakeden conformance",
        usage="%(prog)s [--timeout S] -- <worker argv...>",
        description=(
            "Run a worker program through the snakeden protocol, case by case. It must serve "
            "echo, add, fail, sleep, shout and blob (docs/protocol.md §11). Exit status 1 on "
            "any failure."
        ),
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT, help="seconds to wait for each expected frame"
    )
    ns = parser.parse_args(ours)
    if not worker:
        parser.print_usage()
        return 2
    TIMEOUT = ns.timeout
    results = run_kit(worker, on_result=lambda r: print(format_report([], [r]).splitlines()[1]))
    print(format_report(worker, results).splitlines()[-1])
    return 1 if any(not r.ok for r in results) else 0
