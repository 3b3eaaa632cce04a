"""Tests for the sans-IO wire protocol in ``snakeden._protocol``.

Pure byte-level tests: no processes, no pipes, no sleeps. Like h11's ``tests/test_io.py``, every
parser case is fed all at once, one byte at a time, in arbitrary chunkings, and followed by
trailing data. ``docs/protocol.md`` is the specification these tests hold the code to; the byte
examples printed there are pinned in ``test_documented_example_bytes``.
"""

from __future__ import annotations

import collections
import enum
import itertools
import math
import pathlib
import pickle
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from snakeden._calls import encode_call
from snakeden._protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    ERROR_KINDS,
    FEATURE_FLAT,
    FEATURE_SESSION,
    HEADER_SIZE,
    MAX_REQUEST_ID,
    PROTOCOL_VERSION,
    Flag,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    Kind,
    ProtocolViolation,
    check_frame_size,
    decode_body,
    encode_body,
    encode_frame,
    encode_header,
    error_body,
    hello_body,
    session_call,
)

# --- helpers ----------------------------------------------------------------------------------

ALL_FLAGS = [Flag.NONE, Flag.PICKLE, Flag.BY_REFERENCE, Flag.BATCH, 0x07, 0xFF]
EDGE_IDS = [0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, MAX_REQUEST_ID - 1, MAX_REQUEST_ID]


def enc(frame: Frame, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    return encode_frame(frame.kind, frame.id, frame.body, frame.flags, max_frame_size)


def feed_chunks(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def check_decodes(frames: Sequence[Frame], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
    """h11-style ``tr``: whole, byte by byte, and with a trailing partial frame."""
    data = b"".join(enc(f, max_frame_size) for f in frames)

    # Simple: consume the whole thing.
    dec = FrameDecoder(max_frame_size)
    assert dec.feed(data) == list(frames)
    assert dec.buffered == 0
    assert dec.pending_frame_size() is None

    # Incrementally, one byte at a time: each frame comes out exactly when its last byte does.
    dec = FrameDecoder(max_frame_size)
    got: list[Frame] = []
    ends = set()
    pos = 0
    for f in frames:
        pos += HEADER_SIZE + len(f.body)
        ends.add(pos)
    for i in range(len(data)):
        new = dec.feed(data[i : i + 1])
        if i + 1 in ends:
            assert len(new) == 1
        else:
            assert new == []
        got += new
    assert got == list(frames)
    assert dec.buffered == 0

    # Trailing data: a partial next frame stays buffered and does not disturb earlier ones.
    trailer = encode_frame(Kind.RESULT, 99, b"trailing")
    dec = FrameDecoder(max_frame_size)
    assert dec.feed(data + trailer[:-1]) == list(frames)
    assert dec.buffered == len(trailer) - 1
    assert dec.pending_frame_size() == len(trailer)
    assert dec.feed(trailer[-1:]) == [Frame(Kind.RESULT, 0, 99, b"trailing")]
    assert dec.buffered == 0


frame_st = st.builds(
    Frame,
    kind=st.integers(0, 255),
    flags=st.integers(0, 255),
    id=st.integers(0, MAX_REQUEST_ID),
    body=st.binary(max_size=64),
)

# MessagePack-representable values. Integers are limited to the int64/uint64 range msgpack can
# carry; floats exclude NaN (NaN != NaN; see test_msgpack_nan_and_infinities).
msgpack_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
msgpack_value = st.recursive(
    msgpack_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)
msgpack_tuple_value = st.recursive(
    msgpack_leaf,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(
            st.text() | st.tuples(st.integers(-5, 5), st.text(max_size=2)), inner, max_size=5
        )
    ),
    max_leaves=25,
)


@dataclass
class Point:
    """A Python-only type for the pickle codec (module level, so pickle can find it)."""

    x: float
    y: float
    label: str = ""
    tags: frozenset[str] = frozenset()


def assert_same(a: Any, b: Any) -> None:
    """Equality that also checks types, so True/1, 1/1.0, str/bytes and list/tuple are told
    apart."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)  # same keys in the same order
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, float):
        assert a == b
        assert math.copysign(1.0, a) == math.copysign(1.0, b)  # -0.0 stays -0.0
    else:
        assert a == b


def test_flat_batch_bytes() -> None:
    """docs/protocol.md section 6.2.2: a BATCH|FLAT call of echo on 1 and 2, id 7, and the
    all-succeeded reply."""
    name, flags, body = encode_call(
        "echo", [1, 2], {}, pickle=False, max_frame_size=1 << 20, batch=True, flat=True
    )
    assert (name, flags) == ("echo", Flag.BATCH | Flag.FLAT)
    assert encode_header(Kind.CALL, 7, len(body), flags) + body == bytes.fromhex(
        "00 00 00 10  02  44  00 00 00 07  93 a4 65 63 68 6f 92 01 02 80"
    )
    assert encode_frame(Kind.RESULT, 7, encode_body([1, 2]), Flag.FLAT) == bytes.fromhex(
        "00 00 00 09  03  40  00 00 00 07  92 01 02"
    )
    assert FEATURE_FLAT == "map_flat"


# --- frame layout -----------------------------------------------------------------------------


def test_header_layout() -> None:
    assert HEADER_SIZE == 10
    assert encode_header(Kind.CALL, 0x01020304, body_len=5, flags=Flag.BATCH) == bytes.fromhex(
        "00 00 00 0b  02  04  01 02 03 04"
    )
    frame = encode_frame(Kind.RESULT, 0xA0B0C0D0, b"xyz", Flag.PICKLE)
    length, kind, flags, ident = struct.unpack(">IBBI", frame[:10])
    assert (length, kind, flags, ident) == (6 + 3, 3, 1, 0xA0B0C0D0)
    assert frame[10:] == b"xyz"
    assert len(frame) == 4 + length


def test_wire_values_are_stable() -> None:
    # These numbers are the wire format (docs/protocol.md); renumbering breaks every worker.
    assert {k.name: k.value for k in Kind} == {
        "HELLO": 1,
        "CALL": 2,
        "RESULT": 3,
        "ERROR": 4,
        "PING": 5,
        "PONG": 6,
        "CANCEL": 7,
        "SHUTDOWN": 8,
        "STREAM_ITEM": 9,
        "CREDIT": 10,
        "STREAM_END": 11,
        "HOST_CALL": 12,
        "HOST_REPLY": 13,
        "SESSION_OPEN": 14,
        "SESSION_CLOSE": 15,
    }
    assert {name: int(f) for name, f in Flag.__members__.items()} == {
        "NONE": 0,
        "PICKLE": 1,
        "BY_REFERENCE": 2,
        "BATCH": 4,
        "CONTEXT": 8,
        "STREAM": 0x10,
        "SESSION": 0x20,
        "FLAT": 0x40,
        "NO_REGION": 0x80,
    }
    assert PROTOCOL_VERSION == 1
    assert DEFAULT_MAX_FRAME_SIZE == 256 * 1024 * 1024
    assert MAX_REQUEST_ID == 2**32 - 1


def test_documented_example_bytes() -> None:
    # The worked example in docs/protocol.md, written the same way. Change both together.
    def h(text: str) -> bytes:
        return bytes.fromhex(text)

    assert encode_frame(Kind.PING, 7) == h("00 00 00 06  05  00  00 00 00 07")
    call_body = encode_body(["add", [1, 2], {}])
    assert call_body == h("93 a3 61 64 64 92 01 02 80")
    assert encode_frame(Kind.CALL, 1, call_body) == h(
        "00 00 00 0f  02  00  00 00 00 01  93 a3 61 64 64 92 01 02 80"
    )
    assert encode_frame(Kind.RESULT, 1, encode_body(3)) == h("00 00 00 07  03  00  00 00 00 01  03")
    assert encode_frame(Kind.SHUTDOWN) == h("00 00 00 06  08  00  00 00 00 00")
    assert encode_frame(Kind.PONG, 7, encode_body({"pid": 4242, "calls": 0})) == h(
        "00 00 00 15  06  00  00 00 00 07  82 a3 70 69 64 cd 10 92 a5 63 61 6c 6c 73 00"
    )


def test_documented_stream_and_host_call_bytes() -> None:
    # docs/protocol.md sections 6.7-6.9, written the same way. Change both together.
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    cases = [
        (
            encode_frame(Kind.CALL, 1, encode_body(["count", [3], {}]), Flag.STREAM),
            "00 00 00 10 02 10 00 00 00 01 93 a5 63 6f 75 6e 74 91 03 80",
        ),
        (encode_frame(Kind.CREDIT, 1, encode_body(64)), "00 00 00 07 0a 00 00 00 00 01 40"),
        (encode_frame(Kind.STREAM_ITEM, 1, encode_body(0)), "00 00 00 07 09 00 00 00 00 01 00"),
        (encode_frame(Kind.STREAM_END, 1), "00 00 00 06 0b 00 00 00 00 01"),
        (
            encode_frame(Kind.HOST_CALL, 1, encode_body([5, "add", [2, 3], {}])),
            "00 00 00 10 0c 00 00 00 00 01 94 05 a3\n61 64 64 92 02 03 80",
        ),
        (
            encode_frame(Kind.HOST_REPLY, 1, encode_body([True, 5])),
            "00 00 00 09 0d 00 00 00 00 01 92 c3 05",
        ),
        (encode_body({"concurrency": 4}), "81 ab 63 6f 6e 63 75 72 72 65 6e 63 79\n04"),
    ]
    for data, text in cases:
        assert data == bytes.fromhex(text.replace("\n", " ")), text
        assert text in doc, f"docs/protocol.md lost {text!r}"
    hello = hello_body(pid=1, runtime="r", commands=[], worker_id="w", codecs=[], concurrency=4)
    assert hello["concurrency"] == 4
    assert "concurrency" not in hello_body(
        pid=1, runtime="r", commands=[], worker_id="w", codecs=[]
    )


def test_documented_session_example_bytes() -> None:
    # docs/protocol.md section 6.6, made by the host's own code. Change both together.
    def h(text: str) -> bytes:
        return bytes.fromhex(text)

    assert encode_frame(Kind.SESSION_OPEN, 1) == h("00 00 00 06  0e  00  00 00 00 01")
    call = encode_frame(Kind.CALL, 2, encode_body(["get", ["a"], {}]))
    assert session_call(call, 1) == h(
        "00 00 00 13  02  20  00 00 00 02  00 00 00 01  93 a3 67 65 74 91 a1 61 80"
    )
    assert encode_frame(Kind.SESSION_CLOSE, 1) == h("00 00 00 06  0f  00  00 00 00 01")
    # The flag composes with the others; the session id is big-endian, the whole u32 range.
    traced = encode_frame(Kind.CALL, 9, b"\x94body", Flag.PICKLE | Flag.CONTEXT)
    (frame,) = FrameDecoder().feed(session_call(traced, 0xFFFF_FFFE))
    assert frame.flags == Flag.PICKLE | Flag.CONTEXT | Flag.SESSION and frame.id == 9
    assert frame.body == b"\xff\xff\xff\xfe\x94body"
    assert FEATURE_SESSION == "session"


# --- decoding: whole, byte by byte, chunked, trailing -----------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("ident", EDGE_IDS)
def test_every_kind_and_id_round_trips(kind: Kind, ident: int) -> None:
    frames = [
        Frame(kind, 0, ident, b""),
        Frame(kind, Flag.PICKLE, ident, b"\x00"),
        Frame(kind, 0, ident, encode_body({"k": [1, 2]})),
    ]
    check_decodes(frames)


@pytest.mark.parametrize("flags", ALL_FLAGS)
def test_every_flag_combination_round_trips(flags: int) -> None:
    check_decodes(
        [Frame(Kind.CALL, int(flags), 5, b"body"), Frame(Kind.RESULT, int(flags), 5, b"")]
    )


def test_empty_body_frame_is_just_a_header() -> None:
    data = encode_frame(Kind.PING, 0)
    assert len(data) == HEADER_SIZE
    assert FrameDecoder().feed(data) == [Frame(Kind.PING, 0, 0, b"")]
    check_decodes([Frame(Kind.SHUTDOWN, 0, 0, b"")] * 3)


def test_decoded_fields_are_plain_values() -> None:
    (frame,) = FrameDecoder().feed(encode_frame(Kind.CALL, 3, bytearray(b"abc"), Flag.BATCH))
    assert frame == Frame(Kind.CALL, Flag.BATCH, 3, b"abc")
    assert type(frame.body) is bytes  # not a bytearray or memoryview into the buffer
    assert frame.kind == Kind.CALL  # IntEnum compares equal to the raw int
    assert Kind(frame.kind) is Kind.CALL


def test_unknown_kind_is_passed_up_not_rejected() -> None:
    # The decoder only frames; rejecting unknown kinds (and killing the peer) is the caller's job,
    # as docs/protocol.md says. Make sure the raw number survives so the caller can report it.
    (frame,) = FrameDecoder().feed(encode_frame(200, 1, b"?"))
    assert frame.kind == 200
    with pytest.raises(ValueError):
        Kind(frame.kind)


@given(frames=st.lists(frame_st, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_any_chunking_gives_the_same_frames(frames: list[Frame], cuts: list[int]) -> None:
    data = b"".join(enc(f) for f in frames)
    dec = FrameDecoder()
    assert feed_chunks(dec, split_at(data, cuts)) == frames
    assert dec.buffered == 0
    assert dec.pending_frame_size() is None


@given(frames=st.lists(frame_st, min_size=1, max_size=6), data=st.data())
def test_trailing_partial_frame_stays_buffered(frames: list[Frame], data: st.DataObject) -> None:
    *complete, last = frames
    whole = b"".join(enc(f) for f in complete)
    tail = enc(last)
    cut = data.draw(st.integers(0, len(tail) - 1), label="bytes of the last frame sent")

    dec = FrameDecoder()
    assert dec.feed(whole + tail[:cut]) == complete
    assert dec.buffered == cut
    if cut < 4:
        assert dec.pending_frame_size() is None  # prefix not complete yet
    else:
        assert dec.pending_frame_size() == len(tail)

    # Completing it later, even in more pieces, yields exactly that frame.
    rest = split_at(tail[cut:], data.draw(st.lists(st.integers(0, 100), max_size=4)))
    assert feed_chunks(dec, rest) == [last]
    assert dec.buffered == 0
    assert dec.pending_frame_size() is None


def test_partial_prefix_and_header() -> None:
    frame = encode_frame(Kind.RESULT, 42, b"hello")
    dec = FrameDecoder()
    for n in range(1, 4):
        assert dec.feed(frame[n - 1 : n]) == []
        assert dec.buffered == n
        assert dec.pending_frame_size() is None
    assert dec.feed(frame[3:4]) == []
    assert dec.pending_frame_size() == len(frame) == 15
    assert dec.feed(frame[4:9]) == []  # header itself incomplete
    assert dec.buffered == 9
    assert dec.feed(frame[9:]) == [Frame(Kind.RESULT, 0, 42, b"hello")]


def test_feed_copies_so_a_reused_read_buffer_is_safe() -> None:
    # Both runtimes read into one reusable buffer and feed memoryview slices of it: the decoder
    # must copy what it keeps, and frame bodies must not alias the caller's buffer.
    frames = [Frame(Kind.RESULT, 0, i, bytes([i]) * (i * 7)) for i in range(1, 6)]
    data = b"".join(enc(f) for f in frames)
    readbuf = bytearray(13)
    dec = FrameDecoder()
    got: list[Frame] = []
    for start in range(0, len(data), len(readbuf)):
        chunk = data[start : start + len(readbuf)]
        readbuf[: len(chunk)] = chunk
        got += dec.feed(memoryview(readbuf)[: len(chunk)])
        readbuf[:] = b"\xee" * len(readbuf)  # the next read overwrites the buffer
    assert got == frames
    assert all(type(f.body) is bytes for f in got)
    assert FrameDecoder().feed(bytearray(data)) == frames


def test_feeding_nothing_is_harmless() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    assert dec.buffered == 0
    frame = encode_frame(Kind.PING, 1)
    assert dec.feed(frame[:2]) == []
    assert dec.feed(b"") == []
    assert dec.buffered == 2
    assert dec.feed(frame[2:]) == [Frame(Kind.PING, 0, 1, b"")]


def test_large_allowed_frame_is_not_preallocated() -> None:
    # A frame just under the default limit: after its prefix only 4 bytes are held.
    body_len = DEFAULT_MAX_FRAME_SIZE - HEADER_SIZE
    dec = FrameDecoder()
    assert dec.feed(encode_header(Kind.RESULT, 1, body_len)) == []
    assert dec.buffered == HEADER_SIZE
    assert dec.pending_frame_size() == DEFAULT_MAX_FRAME_SIZE


# --- oversize frames ----------------------------------------------------------------------------


LIMIT = 1024


def test_frame_at_the_limit_is_accepted() -> None:
    body = b"x" * (LIMIT - HEADER_SIZE)
    check_decodes([Frame(Kind.RESULT, 0, 1, body)], max_frame_size=LIMIT)


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-prefix", "byte-by-byte"])
def test_oversize_prefix_raises_before_any_body_arrives(chunked: bool) -> None:
    total = LIMIT + 1
    prefix = struct.pack(">I", total - 4)
    dec = FrameDecoder(LIMIT)
    if chunked:
        for b in prefix[:3]:
            assert dec.feed(bytes([b])) == []
        with pytest.raises(FrameTooLarge) as info:
            dec.feed(prefix[3:])
    else:
        with pytest.raises(FrameTooLarge) as info:
            dec.feed(prefix)
    err = info.value
    assert (err.size, err.limit) == (total, LIMIT)
    message = str(err)
    assert str(total) in message
    assert str(LIMIT) in message
    assert "max_frame_size" in message  # tells the user what to do about it
    assert "less data" in message
    assert isinstance(err, ProtocolViolation)

    # The stream has lost framing: the decoder refuses to go on, whatever it is fed.
    for more in (b"", b"\x00" * 100, encode_frame(Kind.PING, 1)):
        with pytest.raises(ProtocolViolation) as again:
            dec.feed(more)
        assert type(again.value) is ProtocolViolation
        assert "unusable" in str(again.value)


def test_frame_too_large_survives_pickling() -> None:
    # Exceptions cross process boundaries (pickle codec, multiprocessing, concurrent.futures).
    err = pickle.loads(pickle.dumps(FrameTooLarge(LIMIT + 1, LIMIT)))
    assert type(err) is FrameTooLarge
    assert (err.size, err.limit) == (LIMIT + 1, LIMIT)
    assert str(err) == str(FrameTooLarge(LIMIT + 1, LIMIT))
    violation = pickle.loads(pickle.dumps(ProtocolViolation("bad")))
    assert type(violation) is ProtocolViolation
    assert str(violation) == "bad"


def test_oversize_after_good_frames_in_separate_feeds() -> None:
    dec = FrameDecoder(LIMIT)
    good = encode_frame(Kind.RESULT, 1, b"ok")
    assert dec.feed(good) == [Frame(Kind.RESULT, 0, 1, b"ok")]
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\xff\xff\xff\xff")


def test_default_limit_rejects_a_huge_prefix() -> None:
    with pytest.raises(FrameTooLarge) as info:
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    assert info.value.size == 0xFFFF_FFFF + 4
    assert info.value.limit == DEFAULT_MAX_FRAME_SIZE


@given(limit=st.integers(HEADER_SIZE, 1 << 20), body_len=st.integers(0, (1 << 20) + 16))
@example(limit=LIMIT, body_len=LIMIT - HEADER_SIZE)
@example(limit=LIMIT, body_len=LIMIT - HEADER_SIZE + 1)
def test_encoder_and_decoder_agree_on_the_limit(limit: int, body_len: int) -> None:
    # Whatever encode_frame accepts, a decoder with the same limit accepts, and vice versa.
    header = encode_header(Kind.RESULT, 1, body_len)
    fits = body_len + HEADER_SIZE <= limit
    if fits:
        check_frame_size(body_len, limit)
        assert FrameDecoder(limit).feed(header) == ([] if body_len else [Frame(3, 0, 1, b"")])
    else:
        with pytest.raises(FrameTooLarge):
            check_frame_size(body_len, limit)
        with pytest.raises(FrameTooLarge):
            FrameDecoder(limit).feed(header)


def test_check_frame_size_and_encode_frame_refuse_oversize_bodies() -> None:
    check_frame_size(LIMIT - HEADER_SIZE, LIMIT)
    with pytest.raises(FrameTooLarge) as info:
        check_frame_size(LIMIT - HEADER_SIZE + 1, LIMIT)
    assert (info.value.size, info.value.limit) == (LIMIT + 1, LIMIT)
    assert f"{LIMIT + 1} bytes" in str(info.value)

    assert len(encode_frame(Kind.RESULT, 1, b"x" * (LIMIT - HEADER_SIZE), 0, LIMIT)) == LIMIT
    with pytest.raises(FrameTooLarge):
        encode_frame(Kind.RESULT, 1, b"x" * (LIMIT - HEADER_SIZE + 1), 0, LIMIT)
    # The default limit applies when none is given (checked by size only: no 256 MiB body).
    with pytest.raises(FrameTooLarge):
        check_frame_size(DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE)


# --- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(6))
def test_length_shorter_than_header_is_a_violation(length: int) -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolViolation) as info:
        dec.feed(struct.pack(">I", length))
    assert type(info.value) is ProtocolViolation
    assert str(length) in str(info.value)
    assert "6-byte header" in str(info.value)
    with pytest.raises(ProtocolViolation):
        dec.feed(encode_frame(Kind.PING, 1))


def test_length_of_exactly_the_header_is_fine() -> None:
    assert FrameDecoder().feed(struct.pack(">I", 6) + b"\x05\x00\x00\x00\x00\x09") == [
        Frame(Kind.PING, 0, 9, b"")
    ]


def test_text_on_the_channel_is_rejected_quickly() -> None:
    # A worker that prints to the frame pipe by mistake: "Hell" is a 1.2 GB length prefix.
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"Hello from print()\n")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 1000), max_size=10),
    limit=st.sampled_from([HEADER_SIZE, 16, 64, 1024, DEFAULT_MAX_FRAME_SIZE]),
)
@example(data=b"\x00\x00\x00\x00", cuts=[], limit=1024)
@example(data=b"\x00\x00\x04\x00", cuts=[], limit=1024)
@example(data=b"\x00\x00\x00\x06\x01\x02\x00\x00\x00\x00", cuts=[], limit=HEADER_SIZE)
def test_garbage_yields_frames_or_protocol_errors_only(
    data: bytes, cuts: list[int], limit: int
) -> None:
    dec = FrameDecoder(limit)
    got: list[Frame] = []
    try:
        for chunk in split_at(data, cuts):
            got += dec.feed(chunk)
    except ProtocolViolation as exc:  # FrameTooLarge is a subclass
        # The frames completed before the bad bytes come with the error, whole and in order.
        got += exc.frames
        assert data.startswith(b"".join(enc(f, limit) for f in got))
        with pytest.raises(ProtocolViolation):
            dec.feed(b"")
        return
    # No error: what came out re-encodes to exactly the bytes consumed, and the rest is buffered.
    consumed = b"".join(enc(f, limit) for f in got)
    assert data == consumed + data[len(consumed) :]
    assert dec.buffered == len(data) - len(consumed)
    assert all(len(enc(f, limit)) <= limit for f in got)


@pytest.mark.parametrize(
    "bad",
    [b"\x00\x00\x00\x01Z", b"\x7f\xff\xff\xff"],
    ids=["shorter than a header", "over the limit"],
)
def test_a_violation_carries_the_frames_completed_before_it(bad: bytes) -> None:
    """A reply and garbage in one read: the reply is whole and its caller's, whichever way the
    bytes are cut."""
    good = [Frame(Kind.RESULT, 0, 7, b"\xc0"), Frame(Kind.RESULT, 0, 8, b"\x01")]
    data = b"".join(enc(f, 1 << 20) for f in good) + bad
    for cuts in ([], [len(data) - len(bad)], list(range(1, len(data)))):
        dec = FrameDecoder(1 << 20)
        got: list[Frame] = []
        with pytest.raises(ProtocolViolation) as info:
            for chunk in split_at(data, cuts):
                got += dec.feed(chunk)
        assert got + info.value.frames == good


# --- body codecs --------------------------------------------------------------------------------


@given(value=msgpack_value)
def test_msgpack_round_trip(value: Any) -> None:
    body = encode_body(value)
    assert body == msgpack.packb(value, use_bin_type=True)  # plain MessagePack, nothing custom
    assert_same(decode_body(Frame(Kind.RESULT, 0, 1, body)), value)


@given(value=msgpack_value)
def test_msgpack_through_a_whole_frame(value: Any) -> None:
    frame = FrameDecoder().feed(encode_frame(Kind.CALL, 1, encode_body(["cmd", [value], {}])))
    assert_same(decode_body(frame[0]), ["cmd", [value], {}])


def test_msgpack_keeps_str_and_bytes_apart() -> None:
    body = encode_body(["text", b"bin", "", b""])
    assert body == bytes.fromhex("94 a474657874 c40362696e a0 c400")  # str=a*, bin=c4
    out = decode_body(Frame(Kind.RESULT, 0, 1, body))
    assert [type(x) for x in out] == [str, bytes, str, bytes]


def test_msgpack_integer_range() -> None:
    for n in (-(2**63), -1, 0, 2**63 - 1, 2**63, 2**64 - 1):
        assert decode_body(Frame(Kind.RESULT, 0, 1, encode_body(n))) == n
    for n in (-(2**63) - 1, 2**64):
        with pytest.raises(OverflowError):  # a worker reports this as ERROR kind "encode"
            encode_body(n)
    # pickle has no such limit
    big = 2**200
    assert decode_body(Frame(Kind.RESULT, Flag.PICKLE, 1, encode_body(big, Flag.PICKLE))) == big


def test_msgpack_nan_and_infinities() -> None:
    for x in (math.inf, -math.inf):
        assert decode_body(Frame(Kind.RESULT, 0, 1, encode_body(x))) == x
    assert math.isnan(decode_body(Frame(Kind.RESULT, 0, 1, encode_body(math.nan))))


def test_msgpack_round_trips_tuples() -> None:
    # Documented in docs/protocol.md section 5.1: a tuple is extension type 43 whose payload is
    # the MessagePack array of its items, at any depth, also as a map key.
    assert encode_body((1, 2)) == bytes.fromhex("c7 03 2b 92 01 02")
    assert encode_body(()) == bytes.fromhex("d4 2b 90")
    value = (1, ("a", (b"b",)), {"k": (2, 3), (4, (5,)): [()]}, [(6,)])
    out = decode_body(Frame(Kind.RESULT, 0, 1, encode_body(value)))
    assert out == value
    assert type(out) is tuple and type(out[1]) is tuple and type(out[1][1]) is tuple
    assert type(out[2]["k"]) is tuple and type(list(out[2])[1][1]) is tuple
    assert type(out[3]) is list and type(out[3][0]) is tuple
    assert decode_body(Frame(Kind.RESULT, Flag.PICKLE, 1, encode_body(value, Flag.PICKLE))) == value


@given(value=msgpack_tuple_value)
def test_msgpack_round_trip_with_tuples(value: Any) -> None:
    assert_same(decode_body(Frame(Kind.RESULT, 0, 1, encode_body(value))), value)


def test_msgpack_tuples_inside_other_extension_values_reach_the_callers_hook() -> None:
    # decode_body's ext_hook (the host's shared-memory one) still sees every other code, even
    # inside a tuple; without a hook they stay ExtType.
    body = encode_body((msgpack.ExtType(42, b"x"), [msgpack.ExtType(7, b"")]))
    seen: list[int] = []

    def hook(code: int, data: bytes) -> Any:
        seen.append(code)
        return f"ext{code}"

    assert decode_body(Frame(Kind.RESULT, 0, 1, body), hook) == ("ext42", ["ext7"])
    assert seen == [42, 7]
    plain = decode_body(Frame(Kind.RESULT, 0, 1, body))
    assert plain == (msgpack.ExtType(42, b"x"), [msgpack.ExtType(7, b"")])


class Color(enum.IntEnum):
    RED = 1


class Mode(str, enum.Enum):  # noqa: UP042  # not StrEnum: its str() is "Mode.FAST"
    FAST = "fast"


class Pair(NamedTuple):
    a: int
    b: str


class Text(str):
    pass


def test_msgpack_packs_subclasses_as_their_base_type() -> None:
    # strict_types (for tuples) must not change what other subclasses became: exactly the bytes
    # plain MessagePack gives their base value.
    cases: list[tuple[Any, Any]] = [
        (Color.RED, 1),
        (Mode.FAST, "fast"),
        (Text("t"), "t"),
        (collections.OrderedDict(a=1), {"a": 1}),
        (collections.defaultdict(int, b=2), {"b": 2}),
        (collections.UserList([1]), None),  # not a list subclass: refused, as before
    ]
    for value, base in cases:
        if base is None:
            with pytest.raises(TypeError):
                encode_body(value)
            continue
        assert encode_body(value) == msgpack.packb(base, use_bin_type=True), value
        assert_same(decode_body(Frame(Kind.RESULT, 0, 1, encode_body(value))), base)
    assert encode_body([True, 1.5, b"b", bytearray(b"y")]) == msgpack.packb(
        [True, 1.5, b"b", b"y"], use_bin_type=True
    )
    # A named tuple is a tuple: it arrives as a plain one.
    assert_same(decode_body(Frame(Kind.RESULT, 0, 1, encode_body(Pair(1, "x")))), (1, "x"))


def test_msgpack_accepts_non_str_map_keys() -> None:
    # strict_map_key=False: other runtimes may send integer keys; they decode as ints.
    value = {1: "a", -2: "b"}
    assert decode_body(Frame(Kind.RESULT, 0, 1, msgpack.packb(value))) == value


def test_msgpack_refuses_python_only_objects() -> None:
    for value in ({1, 2}, 1j, Point(1, 2), object()):
        with pytest.raises(TypeError):
            encode_body(value)


def test_empty_body_decodes_to_none() -> None:
    for flags in (0, Flag.PICKLE, Flag.BATCH):
        assert decode_body(Frame(Kind.PING, flags, 1, b"")) is None
    # None itself is not empty on the wire: nil is one byte, a pickled None several.
    assert encode_body(None) == b"\xc0"
    assert decode_body(Frame(Kind.RESULT, Flag.PICKLE, 1, encode_body(None, Flag.PICKLE))) is None


def test_malformed_msgpack_body_raises_from_msgpack() -> None:
    # decode_body does not wrap codec errors; the worker turns them into ERROR kind "decode".
    with pytest.raises(ValueError):  # msgpack's ExtraData / FormatError are ValueErrors
        decode_body(Frame(Kind.CALL, 0, 1, b"\xc0\xc0"))
    with pytest.raises(ValueError):
        decode_body(Frame(Kind.CALL, 0, 1, b"\xc1"))
    with pytest.raises(ValueError):  # truncated
        decode_body(Frame(Kind.CALL, 0, 1, b"\x93\x01"))


pickle_value = st.recursive(
    msgpack_leaf
    | st.complex_numbers(allow_nan=False)
    | st.frozensets(st.integers())
    | st.integers()  # unbounded
    | st.builds(
        Point,
        x=st.floats(allow_nan=False),
        y=st.floats(allow_nan=False),
        label=st.text(max_size=5),
        tags=st.frozensets(st.text(max_size=3), max_size=3),
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.sets(st.integers() | st.text(), max_size=4)
        | st.dictionaries(st.integers() | st.text() | st.tuples(st.integers()), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(value=pickle_value)
def test_pickle_round_trip_python_only_objects(value: Any) -> None:
    body = encode_body(value, Flag.PICKLE)
    assert pickle.loads(body) == value  # plain pickle, nothing custom
    (frame,) = FrameDecoder().feed(encode_frame(Kind.RESULT, 1, body, Flag.PICKLE))
    out = decode_body(frame)
    assert out == value
    assert type(out) is type(value)


def test_pickle_specific_objects() -> None:
    for value in ({1, 2, 3}, 3 - 4j, Point(1.5, -2.0, "p", frozenset({"a"})), (1, (2,))):
        flags = Flag.PICKLE | Flag.BATCH  # other bits do not change the codec
        out = decode_body(Frame(Kind.RESULT, flags, 1, encode_body(value, flags)))
        assert out == value
        assert type(out) is type(value)


def test_codec_is_chosen_by_the_pickle_bit_only() -> None:
    assert encode_body([1], Flag.BATCH | Flag.BY_REFERENCE) == encode_body([1])
    assert encode_body([1], Flag.PICKLE) == pickle.dumps([1], protocol=pickle.HIGHEST_PROTOCOL)


# --- message helpers ---------------------------------------------------------------------------


def test_hello_body_shape_and_wire_form() -> None:
    body = hello_body(
        pid=4242,
        runtime="python 3.11.7",
        commands=["add", "mul"],
        worker_id="w0",
        codecs=["msgpack", "pickle"],
    )
    assert body == {
        "protocol": 1,
        "runtime": "python 3.11.7",
        "pid": 4242,
        "commands": ["add", "mul"],
        "worker_id": "w0",
        "codecs": ["msgpack", "pickle"],
    }
    (frame,) = FrameDecoder().feed(encode_frame(Kind.HELLO, 0, encode_body(body)))
    assert (frame.kind, frame.flags, frame.id) == (Kind.HELLO, 0, 0)
    assert decode_body(frame) == body


def test_error_body_shape() -> None:
    body = error_body(kind="user", type_name="ZeroDivisionError", message="division by zero")
    assert body == {
        "kind": "user",
        "type": "ZeroDivisionError",
        "message": "division by zero",
        "traceback": "",
    }
    assert "commands" not in body
    body = error_body(
        kind="unknown_command", type_name="LookupError", message="no 'sub'", commands=["add"]
    )
    assert body["commands"] == ["add"]
    body = error_body(
        kind="user",
        type_name="KeyError",
        message="'k'",
        module="builtins",
        qualname="KeyError",
        args=["k"],
        attrs={"note": 1},
    )
    assert body == {
        "kind": "user",
        "type": "KeyError",
        "message": "'k'",
        "traceback": "",
        "module": "builtins",
        "qualname": "KeyError",
        "args": ["k"],
        "attrs": {"note": 1},
    }
    assert decode_body(Frame(Kind.ERROR, 0, 3, encode_body(body))) == body
    frame = Frame(Kind.ERROR, 0, 3, encode_body(body))
    assert decode_body(frame) == body


def test_error_kinds_match_the_spec() -> None:
    assert {
        "user",
        "unknown_command",
        "bad_call",
        "decode",
        "encode",
        "startup",
        "cancelled",
        "session",
    } == ERROR_KINDS


def test_out_of_range_ids_are_not_encodable() -> None:
    # Ids are u32; the caller must keep them in range (there is no wrap-around in the codec).
    for ident in (-1, MAX_REQUEST_ID + 1):
        with pytest.raises(struct.error):
            encode_frame(Kind.CALL, ident, b"")
