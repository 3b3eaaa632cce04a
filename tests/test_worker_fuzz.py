"""Fuzzing the worker runtime: random frames and random byte splits into a real worker process.

``test_protocol.py`` fuzzes the frame decoder in isolation; here the bytes go through a pipe into
``python -m snakeden.worker tests.workers.fuzzing``. The property, for any input:

* every reply is the right one (kind, id, codec and content, predicted by a model of the worker
  written independently below), in order, and no frame exceeds the frame limit;
* a stream with a protocol violation (bad length prefix, unknown or wrong-direction kind) makes
  the worker exit 4 promptly; SHUTDOWN and EOF make it exit 0; it never dies otherwise, never
  prints a traceback, never hangs;
* after any sequence of valid-but-odd frames, a well-formed CALL gets the right answer.

Starting an interpreter costs ~0.3 s, so examples that leave the worker serving share one worker,
and only the examples that end it start a new one.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import pickle
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from snakeden._protocol import (
    BATCH,
    BY_REFERENCE,
    CONTEXT,
    FLAT,
    HEADER_SIZE,
    MAX_REQUEST_ID,
    PICKLE,
    Frame,
    Kind,
    decode_body,
    encode_body,
    encode_frame,
    encode_header,
)
from snakeden.worker import EXIT_PROTOCOL_ERROR
from tests.worker_harness import Worker, WorkerSupply, running_worker
from tests.workers import fuzzing

TARGET = "tests.workers.fuzzing"
# A small frame limit, so that frames at and over the limit (and error replies that would not
# fit in it) are cheap to produce.
M = 8192
MIB = 1 << 20

COMMANDS: dict[str, Callable[..., Any]] = {
    name: fn
    for name, fn in vars(fuzzing).items()
    if callable(fn) and hasattr(fn, "__snakeden_command__")
}
# Only references the model can predict, and none with side effects on import.
REFERENCES: dict[str, Callable[..., Any] | None] = {
    f"{TARGET}:echo": fuzzing.echo,
    f"{TARGET}:fail": fuzzing.fail,
    f"{TARGET}:nope": None,
    f"{TARGET}:Unprintable.nope": None,
    "math:pi": None,  # not callable
    "snakeden_no_such_module:f": None,
    "": None,
    ":": None,
    "echo": None,
    ".relative:f": None,  # importlib raises TypeError, not ImportError
    "..:f": None,
    "\x00:f": None,
}

FUZZ = settings(
    derandomize=True,  # the same examples on every run: a CI failure is a real one
    database=None,
    deadline=None,  # wall time depends on process scheduling, not on the example
    # No shrinking: after a failure every shrink step needs a fresh worker, and minimising took
    # minutes (past pytest's timeout, which would hide the failing example). Add Phase.shrink
    # here to minimise a failure locally.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- a model of the worker --------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the worker must answer to one frame."""

    ident: int
    pong: bool = False
    pickled: bool = False  # the reply's PICKLE bit (and codec)
    result: Callable[[Any], bool] | None = None  # RESULT allowed: does its value pass?
    errors: frozenset[str] = frozenset()  # ERROR allowed, with one of these kinds
    error_pickled: bool | None = None  # codec of an ERROR if it differs from ``pickled``


@dataclass
class Outcome:
    replies: list[Expect]
    exit_codes: frozenset[int] | None  # None: the worker keeps serving
    may_stop_early: bool  # the replies may stop short (bytes lost with a framing violation)


def parse(stream: bytes) -> tuple[list[Frame], str]:
    """Frames in ``stream``, and how it ends: "end", "partial" or "violation"."""
    frames: list[Frame] = []
    pos = 0
    while len(stream) - pos >= 4:
        (length,) = struct.unpack_from(">I", stream, pos)
        if length < 6 or 4 + length > M:
            return frames, "violation"
        if pos + 4 + length > len(stream):
            return frames, "partial"
        kind, flags, ident = struct.unpack_from(">BBI", stream, pos + 4)
        frames.append(Frame(kind, flags, ident, stream[pos + 10 : pos + 4 + length]))
        pos += 4 + length
    return frames, "end" if pos == len(stream) else "partial"


def predict(stream: bytes) -> Outcome:
    frames, end = parse(stream)
    lost = end == "violation"  # frames read together with the bad bytes may go unanswered
    replies: list[Expect] = []
    for f in frames:
        if f.kind == Kind.CALL:
            replies.append(expect_call(f))
        elif f.kind == Kind.PING:
            replies.append(Expect(f.id, pong=True))
        elif f.kind in (Kind.CANCEL, Kind.CREDIT, Kind.HOST_REPLY):
            pass  # for a call that is not running: nothing to do
        elif f.kind == Kind.SHUTDOWN:
            # Read in one piece with a later violation, SHUTDOWN is never seen: exit 4 then.
            return Outcome(replies, frozenset({0, 4} if lost else {0}), lost)
        else:
            return Outcome(replies, frozenset({EXIT_PROTOCOL_ERROR}), lost)
    if lost:
        return Outcome(replies, frozenset({EXIT_PROTOCOL_ERROR}), True)
    return Outcome(replies, None, False)


def _no_shm(code: int, data: bytes) -> Any:
    if code == 42:  # the worker maps shared memory for this code; random bytes never name any
        raise ValueError("shared-memory reference")
    return msgpack.ExtType(code, data)


def is_args(x: Any) -> bool:
    return isinstance(x, list | tuple)


def run_local(fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, error kind)``, as the worker should see the call."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False, "bad_call"
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(value)  # type: ignore[arg-type]
    except Exception:
        return False, "user"
    return True, value


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (True is not 1; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)  # also tells -0.0 from 0.0
    return bool(a == b)


def expect_call(frame: Frame) -> Expect:
    pickled = bool(frame.flags & PICKLE)
    decode_error = Expect(frame.id, errors=frozenset({"decode"}), error_pickled=False)

    def error(kind: str) -> Expect:
        return Expect(frame.id, pickled=pickled, errors=frozenset({kind}))

    try:
        if not frame.body:
            raise ValueError("empty")
        body = (
            pickle.loads(frame.body)
            if pickled
            else msgpack.unpackb(frame.body, raw=False, strict_map_key=False, ext_hook=_no_shm)
        )
    except Exception:
        return decode_error
    if frame.flags & CONTEXT and type(body) is list and len(body) == 4:
        # The trace context (docs/protocol.md §6.2): a map, whatever is in it, or "decode".
        if type(body[3]) is not dict:
            return decode_error
        body = body[:3]
    if not (is_args(body) and len(body) == 3):
        return decode_error
    name, args, kwargs = body
    batch = bool(frame.flags & BATCH)
    flat = batch and bool(frame.flags & FLAT)  # one argument per item, not an args array
    if not (
        isinstance(name, str)
        and is_args(args)
        and isinstance(kwargs, dict)
        and all(isinstance(k, str) for k in kwargs)
        and (not batch or flat or all(is_args(a) for a in args))
    ):
        return decode_error
    fn = REFERENCES.get(name) if frame.flags & BY_REFERENCE else COMMANDS.get(name)
    if fn is None:
        return error("unknown_command")
    if not batch:
        ok, value = run_local(fn, args, kwargs)
        if not ok:
            return error(value)
        return _fitting(frame.id, pickled, value)
    outcomes = [run_local(fn, [a] if flat else a, kwargs) for a in args]
    if all(ok for ok, _ in outcomes):
        if flat:  # every item succeeded: the FLAT reply, the values alone
            return _fitting(frame.id, pickled, [v for _, v in outcomes])
        values = [[True, v] for _, v in outcomes]
        return _fitting(frame.id, pickled, values)

    def batch_matches(got: Any) -> bool:
        if not isinstance(got, list) or len(got) != len(outcomes):
            return False
        for (ok, want), item in zip(outcomes, got, strict=True):
            if not (isinstance(item, list) and len(item) == 2 and item[0] is ok):
                return False
            if ok and not same(want, item[1]):
                return False
            if not ok and not (isinstance(item[1], dict) and item[1].get("kind") == want):
                return False
        return True

    # With failed items the reply holds tracebacks of unknown length: it may not fit.
    return Expect(frame.id, pickled=pickled, result=batch_matches, errors=frozenset({"encode"}))


def _fitting(ident: int, pickled: bool, value: Any) -> Expect:
    """RESULT ``value``, or ERROR "encode" if it cannot be sent in one frame."""
    codec = PICKLE if pickled else 0
    try:
        size = len(encode_body(value, codec)) + HEADER_SIZE
    except Exception:
        size = M + 1
    if size > M:
        return Expect(ident, pickled=pickled, errors=frozenset({"encode"}))
    return Expect(ident, pickled=pickled, result=lambda got: same(got, value))


def check_reply(w: Worker, frame: Frame, want: Expect) -> None:
    assert frame.id == want.ident, (frame, want)
    if want.pong:
        assert (frame.kind, frame.flags) == (Kind.PONG, 0), frame
        body = decode_body(frame)
        assert body["pid"] == w.pid and isinstance(body["calls"], int), body
        return
    body = decode_body(frame)
    if frame.kind == Kind.RESULT:
        assert want.result is not None, f"unexpected RESULT {body!r:.300} for {want}"
        assert bool(frame.flags & PICKLE) == want.pickled, frame
        assert want.result(body), f"wrong RESULT {body!r:.300}"
        return
    assert frame.kind == Kind.ERROR, frame
    pickled = want.pickled if want.error_pickled is None else want.error_pickled
    assert bool(frame.flags & PICKLE) == pickled, (frame, want)
    assert isinstance(body, dict), body
    assert body.get("kind") in want.errors, f"ERROR {body!r:.500} where {want} was expected"
    for key in ("type", "message", "traceback"):
        assert isinstance(body[key], str), body
    if "commands" in body:  # left out when the ERROR would not fit in a frame with it
        assert body["kind"] == "unknown_command" and body["commands"] == sorted(COMMANDS), body


def check_no_traceback(w: Worker) -> None:
    out = w.output()
    assert "Traceback" not in out and "Fatal Python error" not in out, out


# --- strategies -------------------------------------------------------------------------------

ints = st.integers(-(2**63), 2**64 - 1)  # what MessagePack can carry
ids = st.integers(0, MAX_REQUEST_ID) | st.sampled_from([0, 1, MAX_REQUEST_ID])
# 0x80: NO_REGION, answer by pipe: the same answer. 0x08 is CONTEXT: with a 3-element body it
# changes nothing, with 4 elements the 4th is the context. 0x40 (in 0xC0, 0xC8) is FLAT: nothing
# without BATCH; with it, each item is one argument. (0x10 is STREAM and 0x20 is SESSION, which
# change what a call is: tests/test_streaming.py, tests/test_sessions.py.)
reserved_bits = st.sampled_from([0, CONTEXT, 0x80, 0xC0, 0xC8])
leaf = (
    st.none() | st.booleans() | ints | st.floats() | st.text(max_size=10) | st.binary(max_size=10)
)
values = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
pickle_values = st.recursive(
    st.none()
    | st.integers()  # beyond 64 bits too: pickle's point
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text(max_size=10)
    | st.frozensets(st.integers(), max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner),
    max_leaves=8,
)


@st.composite
def long_texts(draw: st.DrawFn) -> str:
    """Texts up to most of a frame, of characters that repr() or UTF-8 make longer."""
    char = draw(st.sampled_from(["x", "\x00", "é", "\U0001f600", "'"]))
    return char * draw(st.integers(0, (M - 100) // len(char.encode())))


command_names = st.sampled_from(sorted(COMMANDS)) | st.text(max_size=12) | long_texts()
kwarg_names = st.sampled_from(["x", "a", "message", "n"]) | st.text(max_size=6) | long_texts()
arg_lists = st.lists(values, max_size=3)
kwarg_maps = st.dictionaries(kwarg_names, values, max_size=2)
not_lists: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    ints,
    st.text(max_size=5),
    st.binary(max_size=5),
    st.dictionaries(st.text(max_size=3), values, max_size=2),
)
not_str: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    ints,
    st.binary(max_size=5),
    st.lists(ints, max_size=2),
    st.dictionaries(st.text(max_size=3), ints, max_size=1),
)


def pack(v: Any) -> bytes:
    return encode_body(v, 0)


def well_formed(v: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """``[command, args, kwargs]`` that fit the command's signature, with values from ``v``."""
    one = v.map(lambda x: [x])
    shapes: dict[str, st.SearchStrategy[tuple[Any, Any]]] = {
        "echo": st.tuples(one, st.just({})) | st.tuples(st.just([]), v.map(lambda x: {"x": x})),
        "aecho": st.tuples(one, st.just({})),
        "kw": st.tuples(st.just([]), v.map(lambda x: {"a": x}) | st.just({})),
        "fail": st.tuples(one, st.just({})),
        "sized": st.tuples(st.integers(0, 2 * M).map(lambda n: [n]), st.just({})),
        "fail_unprintable": st.just(([], {})),
        "unsendable": st.just(([], {})),
    }
    assert set(shapes) == set(COMMANDS)
    return st.sampled_from(sorted(shapes)).flatmap(
        lambda name: shapes[name].map(lambda ak: [name, *ak])
    )


def well_formed_batch(v: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(well_formed(v), min_size=1, max_size=4).map(
        lambda cs: [cs[0][0], [c[1] for c in cs if c[0] == cs[0][0]], cs[0][2]]
    )


# Each strategy gives ``(flags, body)`` of a CALL.
msgpack_calls = st.one_of(
    well_formed(values).map(pack),
    st.tuples(command_names, arg_lists, kwarg_maps).map(lambda c: pack(list(c))),
).map(lambda body: (0, body))
odd_bodies = st.one_of(
    values.map(pack),  # anything at all, mostly not a 3-element array
    st.lists(values, min_size=4, max_size=5).map(pack),
    st.tuples(not_str, arg_lists, kwarg_maps).map(lambda c: pack(list(c))),
    st.tuples(command_names, not_lists, kwarg_maps).map(lambda c: pack(list(c))),
    st.tuples(command_names, arg_lists, not_lists).map(lambda c: pack(list(c))),
    st.tuples(command_names, arg_lists, st.dictionaries(ints, values, min_size=1)).map(
        lambda c: pack(list(c))
    ),
    st.binary(max_size=40),  # mostly not MessagePack at all
    st.just(b""),
    st.just(b"\x93\xa4echo\x91"),  # truncated MessagePack
    st.just(pack(["echo", [1], {}]) + b"\x00"),  # trailing bytes
)
odd_calls = st.tuples(st.sampled_from([0, BY_REFERENCE, BATCH]), odd_bodies)
pickle_calls = st.one_of(
    well_formed(pickle_values).map(pickle.dumps),
    st.tuples(
        command_names,
        st.lists(pickle_values, max_size=2) | st.tuples(pickle_values),
        st.dictionaries(kwarg_names, pickle_values, max_size=1),
    ).map(lambda c: pickle.dumps(list(c))),
    pickle_values.map(pickle.dumps),
    st.binary(max_size=40),
    st.just(pickle.dumps(["echo", [1], {}])[:-3]),
).map(lambda body: (PICKLE, body))
batch_calls = st.one_of(
    well_formed_batch(values).map(lambda c: (BATCH, pack(c))),
    well_formed_batch(pickle_values).map(lambda c: (BATCH | PICKLE, pickle.dumps(c))),
    st.tuples(command_names, st.lists(arg_lists | not_lists, max_size=4), kwarg_maps).map(
        lambda c: (BATCH, pack(list(c)))
    ),
)
reference_calls = st.tuples(
    st.sampled_from(sorted(REFERENCES)) | not_str, arg_lists, kwarg_maps
).map(lambda c: (BY_REFERENCE, pack(list(c))))
# A trace context: mostly W3C-looking headers, sometimes anything (it must never fail a call).
traceparents = st.builds(
    "{}-{}-{}-{}".format,
    st.sampled_from(["00", "ff", "0x"]),
    st.text("0123456789abcdef", min_size=31, max_size=33),
    st.text("0123456789abcdef", min_size=15, max_size=17),
    st.sampled_from(["01", "00", "zz"]),
)
carriers = st.one_of(
    st.fixed_dictionaries({"traceparent": traceparents}, optional={"tracestate": st.text()}),
    st.dictionaries(st.text(max_size=12) | ints, values, max_size=3),
    values,  # not a map: "decode"
)
context_calls = st.tuples(
    st.sampled_from([CONTEXT, CONTEXT | BATCH, CONTEXT | PICKLE]),
    well_formed(values),
    carriers,
).map(
    lambda c: (
        c[0],
        pickle.dumps([*c[1], c[2]])
        if c[0] & PICKLE
        else pack([c[1][0], [c[1][1]], c[1][2], c[2]] if c[0] & BATCH else [*c[1], c[2]]),
    )
)
# one_of picks a branch uniformly: listed twice, a kind of call comes up twice as often.
calls = st.one_of(
    msgpack_calls,
    msgpack_calls,
    odd_calls,
    odd_calls,
    pickle_calls,
    batch_calls,
    reference_calls,
    context_calls,
)


@st.composite
def call_frames(draw: st.DrawFn) -> bytes:
    flags, body = draw(calls)
    frame: bytes = (
        encode_header(Kind.CALL, draw(ids), len(body), flags | draw(reserved_bits)) + body
    )
    if len(frame) > M:  # the host never sends those; over-size frames are tested elsewhere
        return encode_frame(Kind.CALL, draw(ids), pack(["echo", [None], {}]))
    return frame


def simple_frame(kind: Kind) -> st.SearchStrategy[bytes]:
    """PING, CANCEL, SHUTDOWN: the body is specified empty and must be ignored if not."""
    return st.builds(
        lambda i, b, f: encode_header(kind, i, len(b), f) + b,
        ids,
        st.just(b"") | st.binary(max_size=20),
        st.integers(0, 255),
    )


# Kinds past SHUTDOWN that the worker serves rather than dies of (sessions, section 6.6).
_SERVED_KINDS = (Kind.CREDIT, Kind.HOST_REPLY, Kind.SESSION_OPEN, Kind.SESSION_CLOSE)

serving_frames = st.one_of(
    call_frames(),
    call_frames(),
    call_frames(),
    simple_frame(Kind.PING),
    simple_frame(Kind.CANCEL),
    simple_frame(Kind.CREDIT),
    simple_frame(Kind.HOST_REPLY),
)
ending_bytes = st.one_of(
    simple_frame(Kind.SHUTDOWN),
    st.builds(  # unknown kinds, and the worker -> host kinds
        lambda k, i, b: encode_header(k, i, len(b)) + b,
        st.sampled_from([0, Kind.HELLO, Kind.RESULT, Kind.ERROR, Kind.PONG, 9, 255])
        | st.integers(9, 255).filter(lambda k: k not in _SERVED_KINDS),
        ids,
        st.binary(max_size=8),
    ),
    st.integers(0, 5).map(struct.Struct(">I").pack),  # shorter than the header
    st.integers(M - 3, 2**32 - 1).map(struct.Struct(">I").pack),  # over the limit
    st.binary(min_size=1, max_size=40),  # garbage: could be anything
    call_frames().map(lambda f: f[: len(f) // 2]),  # truncated, then EOF
)


def chunked(stream: bytes, frames: list[bytes], mode: str, cuts: Iterable[int]) -> list[bytes]:
    if mode == "whole":  # everything coalesced into one write
        return [stream]
    if mode == "frames":
        return frames
    if mode == "bytes" and len(stream) <= 400:
        return [stream[i : i + 1] for i in range(len(stream))]
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


splits = st.tuples(
    st.sampled_from(["whole", "frames", "bytes", "cuts"]),
    st.lists(st.integers(0, 1 << 20), max_size=12),
)


# --- the properties ---------------------------------------------------------------------------


def test_odd_frames_never_desynchronise_the_worker() -> None:
    """Valid-but-odd frames in any chunking: exact replies, and a following CALL still works."""
    with WorkerSupply(TARGET, max_frame_size=M) as supply:

        @settings(FUZZ, max_examples=200)
        @given(
            frames=st.lists(serving_frames, max_size=8),
            probe=st.tuples(ids, values),
            split=splits,
        )
        def check(
            frames: list[bytes], probe: tuple[int, Any], split: tuple[str, list[int]]
        ) -> None:
            probe_frame = encode_frame(Kind.CALL, probe[0], pack(["echo", [probe[1]], {}]))
            frames = [*frames, probe_frame]
            stream = b"".join(frames)
            outcome = predict(stream)
            assert outcome.exit_codes is None
            w = supply.get()
            try:
                assert w.send(chunked(stream, frames, *split)), w.output()
                for want in outcome.replies:
                    check_reply(w, w.reply(), want)
                assert not w.inbox, list(w.inbox)
                assert not w.exited, w.output()
            except BaseException:
                supply.discard()  # unknown state; Hypothesis reruns the failing example
                raise

        check()
        assert supply.started == 1, "a worker exited on valid frames"
        assert supply.worker is not None
        check_no_traceback(supply.worker)


def test_violations_and_endings() -> None:
    """Frames, then something that ends the conversation, then more frames: the worker answers
    what came before, exits with the right code, and ignores the rest."""

    @settings(FUZZ, max_examples=12)
    @given(
        before=st.lists(serving_frames, max_size=3),
        ending=ending_bytes,
        after=st.lists(serving_frames, max_size=2),
        split=splits,
    )
    def check(
        before: list[bytes], ending: bytes, after: list[bytes], split: tuple[str, list[int]]
    ) -> None:
        frames = [*before, ending, *after]
        stream = b"".join(frames)
        outcome = predict(stream)
        with running_worker(TARGET, max_frame_size=M) as w:
            w.send(chunked(stream, frames, *split))
            if outcome.exit_codes is None:
                w.close_input()  # EOF: the host is gone
            code = w.wait_exit()
            got = []
            while (frame := w.next_frame()) is not None:
                got.append(frame)
            if outcome.may_stop_early:
                assert len(got) <= len(outcome.replies), got
            else:
                assert len(got) == len(outcome.replies), (got, outcome.replies)
            for frame, want in zip(got, outcome.replies, strict=False):
                check_reply(w, frame, want)
            assert code in (outcome.exit_codes or {0}), w.output()
            check_no_traceback(w)
            assert w.own_peak_below(200 * 1024), (w.maxrss_kib, w.inherited_maxrss_kib)

    check()


# --- explicit cases ---------------------------------------------------------------------------


def exchange() -> tuple[list[bytes], list[Expect]]:
    frames = [
        encode_frame(Kind.CALL, 1, pack(["echo", [{"a": [1, 2.5, "é"]}], {}])),
        encode_frame(Kind.PING, 2),
        encode_frame(Kind.CANCEL, 3),
        encode_frame(Kind.CALL, 4, b"\xc1"),  # never valid MessagePack
        encode_frame(Kind.CALL, 5, pack(["nope", [], {}])),
        encode_frame(Kind.CALL, 6, pickle.dumps(["echo", ({1, 2},), {}]), PICKLE),
        encode_frame(Kind.CALL, 7, pack(["echo", [], {"x": b"\x00" * 300}])),
    ]
    stream = b"".join(frames)
    return frames, predict(stream).replies


def test_every_split_point() -> None:
    """A stream of frames cut in two at every byte boundary, then fed byte by byte."""
    frames, replies = exchange()
    stream = b"".join(frames)
    assert len(replies) == 6
    with running_worker(TARGET, max_frame_size=M) as w:
        cuts: list[list[bytes]] = [[stream[:i], stream[i:]] for i in range(1, len(stream))]
        cuts.append([stream[i : i + 1] for i in range(len(stream))])
        for chunks in cuts:
            assert w.send(chunks)
            for want in replies:
                check_reply(w, w.reply(), want)
        assert not w.exited
        check_no_traceback(w)


def test_huge_length_prefix_exits_promptly_without_allocating() -> None:
    # The default frame limit (256 MiB), and only the 4 prefix bytes: the worker must decide on
    # them alone, without waiting for (or making room for) the body.
    with running_worker(TARGET, max_frame_size=256 * MIB) as w:
        w.send([struct.pack(">I", 1 << 31)], settle=False)
        assert w.wait_exit() == EXIT_PROTOCOL_ERROR
        assert "exceeds the maximum frame size" in w.output()
        check_no_traceback(w)
        assert w.own_peak_below(100 * 1024), (w.maxrss_kib, w.inherited_maxrss_kib)


def test_large_declared_frame_is_not_preallocated() -> None:
    # A limit above 2 GiB, so that a 2 GiB announcement is legal: the worker must buffer only
    # what has arrived.
    with running_worker(TARGET, max_frame_size=1 << 32) as w:
        w.send([encode_header(Kind.CALL, 1, (1 << 31) - 16) + b"\x93\xa4echo"])
        assert psutil.Process(w.pid).memory_info().rss < 100 * MIB
        w.close_input()
        assert w.wait_exit() == 0
        check_no_traceback(w)
        assert w.own_peak_below(100 * 1024), (w.maxrss_kib, w.inherited_maxrss_kib)


def test_shutdown_answers_earlier_calls_and_ignores_later_frames() -> None:
    stream = b"".join(
        [
            encode_frame(Kind.CALL, 1, pack(["echo", [1], {}])),
            encode_frame(Kind.SHUTDOWN, 0, b"ignored body"),
            encode_frame(Kind.CALL, 2, pack(["echo", [2], {}])),
            encode_frame(0, 3),  # would be a violation, but comes after SHUTDOWN
        ]
    )
    with running_worker(TARGET, max_frame_size=M) as w:
        w.send([stream], settle=False)
        assert w.wait_exit() == 0
        frame = w.reply()
        assert (frame.kind, frame.id, decode_body(frame)) == (Kind.RESULT, 1, 1)
        assert w.next_frame() is None
        check_no_traceback(w)


@pytest.mark.parametrize("tail", [b"", encode_frame(Kind.CALL, 9, b"\x90")[:-1]])
def test_eof_exits_0_even_mid_frame(tail: bytes) -> None:
    with running_worker(TARGET, max_frame_size=M) as w:
        assert w.call(1, "echo", "x").kind == Kind.RESULT
        w.send([tail])
        w.close_input()
        assert w.wait_exit() == 0
        assert w.next_frame() is None
        check_no_traceback(w)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (encode_frame(0, 1, b"\x90"), "unknown frame kind 0"),
        (encode_frame(Kind.RESULT, 1, b"\x90"), "unknown frame kind 3"),  # host -> worker only
        (b"\x00\x00\x00\x05", "shorter than the 6-byte header"),
    ],
)
def test_violations_exit_4(data: bytes, complaint: str) -> None:
    with running_worker(TARGET, max_frame_size=M) as w:
        w.send([data])
        assert w.wait_exit() == EXIT_PROTOCOL_ERROR
        assert complaint in w.output()
        check_no_traceback(w)


def test_host_gone_before_the_reply_exits_quietly() -> None:
    with running_worker(TARGET, max_frame_size=M) as w:
        assert w.rfd is not None
        os.close(w.rfd)  # the host can no longer read: the worker's reply gets EPIPE
        w.rfd = None
        w.send([encode_frame(Kind.CALL, 1, pack(["echo", [1], {}]))])
        assert w.wait_exit() == 0
        check_no_traceback(w)


# Each of these CALLs once crashed the worker (exit 1 with a traceback), was answered wrongly, or
# got an ERROR frame over the frame limit (the host would kill the worker for it). Kept as plain
# frames, so they are checked whatever the strategies above happen to generate.
LONG_TEXT = "\u00e9" * 4000  # 8000 bytes in UTF-8: the CALL fits in M, an echo of it twice not
REGRESSIONS: list[tuple[str, int, bytes, str]] = [
    # (what it was, flags, body, the ERROR kind now)
    ("echo(5): args as bytes were spread", 0, pack(["echo", b"\x05", {}]), "decode"),
    ("echo('k'): args as a map were spread", 0, pack(["echo", {"k": 1}, {}]), "decode"),
    ("bad_call: args as a string were spread", 0, pack(["echo", "ab", {}]), "decode"),
    ("bad_call: kwargs not a map", 0, pack(["echo", [1], [1]]), "decode"),
    ("bad_call: kwargs with an int key", 0, pack(["echo", [1], {1: 2}]), "decode"),
    ("unknown_command 1: command not a string", 0, pack([1, [], {}]), "decode"),
    ("crash: unhashable command", 0, pack([[1], [], {}]), "decode"),
    ("crash: BATCH args not an array", BATCH, pack(["echo", 5, {}]), "decode"),
    ("bad_call: BATCH item not an array", BATCH, pack(["echo", ["ab"], {}]), "decode"),
    ("crash: reference not a string", BY_REFERENCE, pack([5, [], {}]), "decode"),
    ("crash: relative import", BY_REFERENCE, pack([".x:y", [], {}]), "unknown_command"),
    ("crash: empty module name", BY_REFERENCE, pack(["..:f", [], {}]), "unknown_command"),
    ("ERROR over M: repr of a long name", 0, pack(["\x00" * 3000, [], {}]), "unknown_command"),
    ("ERROR over M: long kwarg name", 0, pack(["echo", [1], {LONG_TEXT: 1}]), "bad_call"),
    ("ERROR over M: long message", 0, pack(["fail", [LONG_TEXT], {}]), "user"),
    ("crash: str(exc) raised", 0, pack(["fail_unprintable", [], {}]), "user"),
    (
        "crash: str(exc) raised while encoding",
        PICKLE,
        pickle.dumps(["unsendable", [], {}]),
        "encode",
    ),
    ("pickled decode ERROR", PICKLE, b"\x80\x05garbage", "decode"),
    ("empty body", 0, b"", "decode"),
    ("nesting deeper than MessagePack allows", 0, b"\x91" * 8000 + b"\xc0", "decode"),
]


def test_regressions() -> None:
    with running_worker(TARGET, max_frame_size=M) as w:
        for n, (label, flags, body, kind) in enumerate(REGRESSIONS, 1):
            frame = encode_frame(Kind.CALL, n, body, flags, max_frame_size=M)
            assert w.send([frame], settle=False), f"{label}: {w.output()}"
            want = Expect(
                n,
                pickled=bool(flags & PICKLE),
                errors=frozenset({kind}),
                error_pickled=False if kind == "decode" else None,
            )
            check_reply(w, w.reply(), want)
            assert w.call(1000 + n, "echo", label).kind == Kind.RESULT, label
        assert not w.exited
        check_no_traceback(w)
