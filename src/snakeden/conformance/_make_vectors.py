"""Regenerate ``vectors.json`` (``python -m snakeden.conformance._make_vectors``).

The JSON file is the language-neutral source of truth that the conformance kit and the Node
runtime's tests both read; this script only writes it, with exact bytes (non-shortest encodings
included), so nothing here is needed at run time.
"""

from __future__ import annotations

import json
import pathlib
import struct

from snakeden._protocol import (
    BATCH,
    BY_REFERENCE,
    PICKLE,
    SESSION,
    Kind,
    encode_body,
    encode_frame,
    session_call,
)

HERE = pathlib.Path(__file__).with_name("vectors.json")


def call(ident: int, command: str, args_hex: list[str], flags: int = 0, kwargs: str = "80") -> str:
    """A CALL whose args are given as raw MessagePack items (hex), so a vector can carry any
    encoding of a value, not just the one a Python packer would pick."""
    n = len(args_hex)
    assert n < 16
    body = "93" + encode_body(command).hex() + f"{0x90 + n:02x}" + "".join(args_hex) + kwargs
    return encode_frame(Kind.CALL, ident, bytes.fromhex(body), flags).hex()


def session_call_hex(ident: int, session_id: int) -> str:
    """add(1, 2) as a call of session ``session_id`` (docs/protocol.md section 6.6)."""
    return session_call(bytes.fromhex(call(ident, "add", ["01", "02"])), session_id).hex()


def h(value: object) -> str:
    return encode_body(value).hex()


# name, MessagePack bytes (hex) of the value, and (optional) the value the echo must return when
# it is not the value itself (e.g. a tuple may come back as an array).
VALUES: list[tuple[str, str, str | None]] = [
    ("nil", "c0", None),
    ("true", "c3", None),
    ("false", "c2", None),
    ("positive_fixint", "7f", None),
    ("negative_fixint", "e0", None),
    ("uint8", "cc ff", None),
    ("uint16", "cd ff ff", None),
    ("uint32", "ce ff ff ff ff", None),
    ("uint64_max", "cf ff ff ff ff ff ff ff ff", None),
    ("uint64_2pow53_plus1", "cf 00 20 00 00 00 00 00 01", None),
    ("int8", "d0 80", None),
    ("int16", "d1 80 00", None),
    ("int32", "d2 80 00 00 00", None),
    ("int64_min", "d3 80 00 00 00 00 00 00 00", None),
    ("int_non_shortest", "cf 00 00 00 00 00 00 00 01", None),
    ("float32", "ca 3f c0 00 00", None),
    ("float64", "cb 40 09 21 fb 54 44 2d 18", None),
    ("float64_nan", "cb 7f f8 00 00 00 00 00 00", None),
    ("float64_inf", "cb 7f f0 00 00 00 00 00 00", None),
    ("float64_neg_inf", "cb ff f0 00 00 00 00 00 00", None),
    ("fixstr_empty", "a0", None),
    ("fixstr_unicode", h("héllo, 世界 🐍"), None),
    ("str8", "d9 03 61 62 63", None),
    ("str16", "da 00 03 61 62 63", None),
    ("str32", "db 00 00 00 03 61 62 63", None),
    ("str16_300_chars", h("x" * 300), None),
    ("bin8", "c4 03 00 ff 10", None),
    ("bin16", "c5 00 02 de ad", None),
    ("bin32", "c6 00 00 00 01 7f", None),
    ("bin_empty", "c4 00", None),
    ("fixarray", h([1, "a", None]), None),
    ("array16", "dc 00 02 01 02", None),
    ("array32", "dd 00 00 00 01 c0", None),
    ("array_empty", "90", None),
    ("fixmap", h({"a": 1, "b": [True, False]}), None),
    ("map16", "de 00 01 a1 6b a1 76", None),
    ("map32", "df 00 00 00 01 a1 6b c0", None),
    ("map_empty", "80", None),
    ("nested", h({"list": [[1, [2, [3, {"deep": b"\x00"}]]]], "n": None}), None),
    ("tuple_ext43", "c7 03 2b 92 01 02", None),  # (1, 2): a tuple, or an array, may come back
    ("tuple_empty_fixext1", "d4 2b 90", None),
    ("tuple_nested", "c7 08 2b 92 01 c7 03 2b 92 02 03", None),
]


def main() -> None:
    ident = 0

    def nid() -> int:
        nonlocal ident
        ident += 1
        return ident

    values = []
    for name, value_hex, back in VALUES:
        i = nid()
        values.append(
            {
                "name": f"echo.{name}",
                "send": [call(i, "echo", [value_hex.replace(" ", "")])],
                "expect": [
                    {"kind": Kind.RESULT, "id": i, "body": (back or value_hex).replace(" ", "")}
                ],
            }
        )
    serving: list[dict[str, object]] = []

    def vec(
        name: str, doc: str, send: list[str], expect: list[dict[str, object]], **kw: object
    ) -> None:
        serving.append({"name": name, "doc": doc, "send": send, "expect": expect, **kw})

    i = nid()
    vec(
        "call.add",
        '["add", [1, 2], {}] -> 3 (spec §9)',
        [call(i, "add", ["01", "02"])],
        [{"kind": 3, "id": i, "body": "03"}],
    )
    i = nid()
    vec(
        "call.add_strings",
        '["add", ["ab", "cd"], {}] -> "abcd"',
        [call(i, "add", [h("ab"), h("cd")])],
        [{"kind": 3, "id": i, "body": h("abcd")}],
    )
    i = nid()
    vec(
        "call.id_max",
        "a CALL with id 0xFFFFFFFF is answered with that id",
        [call(0xFFFFFFFF, "add", ["01", "01"])],
        [{"kind": 3, "id": 0xFFFFFFFF, "body": "02"}],
    )
    i = nid()
    vec(
        "error.user",
        'fail("boom") -> ERROR kind "user", message "boom"',
        [call(i, "fail", [h("boom")])],
        [{"kind": 4, "id": i, "error": {"kind": "user", "message": "boom"}}],
    )
    i = nid()
    vec(
        "error.unknown_command",
        "an unknown command -> ERROR unknown_command listing commands",
        [call(i, "no_such_command_xyz", [])],
        [
            {
                "kind": 4,
                "id": i,
                "error": {"kind": "unknown_command"},
                "commands_include": ["echo", "add", "fail", "sleep", "shout", "blob"],
            }
        ],
    )
    i = nid()
    vec(
        "error.decode_not_msgpack",
        "a body that is not MessagePack -> ERROR decode",
        [encode_frame(Kind.CALL, i, b"\xc1").hex()],
        [{"kind": 4, "id": i, "error": {"kind": "decode"}}],
    )
    i = nid()
    vec(
        "error.decode_two_elements",
        "a body of 2 elements -> ERROR decode",
        [encode_frame(Kind.CALL, i, encode_body(["add", [1, 2]])).hex()],
        [{"kind": 4, "id": i, "error": {"kind": "decode"}}],
    )
    i = nid()
    vec(
        "error.decode_not_array",
        "a body that is an int -> ERROR decode",
        [encode_frame(Kind.CALL, i, encode_body(5)).hex()],
        [{"kind": 4, "id": i, "error": {"kind": "decode"}}],
    )
    i = nid()
    vec(
        "error.pickle_refused",
        "PICKLE to a worker without pickle -> ERROR decode in MessagePack",
        [encode_frame(Kind.CALL, i, b"\x80\x05N.", PICKLE).hex()],
        [{"kind": 4, "id": i, "flags": 0, "error": {"kind": "decode"}}],
        skip_if_codec="pickle",
    )
    i = nid()
    vec(
        "error.by_reference_refused",
        "BY_REFERENCE to a non-Python worker -> unknown_command",
        [call(i, "os:getpid", [], BY_REFERENCE)],
        [{"kind": 4, "id": i, "error": {"kind": "unknown_command"}}],
        skip_if_codec="pickle",
    )
    i = nid()
    vec(
        "batch.add",
        "BATCH add [[1, 2], [3, 4]] -> [[true, 3], [true, 7]]",
        [encode_frame(Kind.CALL, i, encode_body(["add", [[1, 2], [3, 4]], {}]), BATCH).hex()],
        [{"kind": 3, "id": i, "body": h([[True, 3], [True, 7]])}],
    )
    i = nid()
    vec(
        "batch.fail_item",
        'BATCH fail ["a", "b"]: each item its own [false, error]',
        [encode_frame(Kind.CALL, i, encode_body(["fail", [["a"], ["b"]], {}]), BATCH).hex()],
        [
            {
                "kind": 3,
                "id": i,
                "batch": [
                    {"ok": False, "error": {"kind": "user", "message": "a"}},
                    {"ok": False, "error": {"kind": "user", "message": "b"}},
                ],
            }
        ],
    )
    i = nid()
    vec(
        "batch.unknown_command",
        "BATCH of an unknown command -> one ERROR unknown_command",
        [encode_frame(Kind.CALL, i, encode_body(["nope_xyz", [[1]], {}]), BATCH).hex()],
        [{"kind": 4, "id": i, "error": {"kind": "unknown_command"}}],
    )
    i = nid()
    vec(
        "ping.pong",
        "PING -> PONG with the same id, a map with int pid and calls",
        [encode_frame(Kind.PING, i).hex()],
        [{"kind": 6, "id": i, "pong": True}],
    )
    i = nid()
    vec(
        "cancel.unknown_id",
        "CANCEL of an unknown id is ignored (then PING -> PONG only)",
        [encode_frame(Kind.CANCEL, 999_999).hex(), encode_frame(Kind.PING, i).hex()],
        [{"kind": 6, "id": i, "pong": True}],
    )
    i, j = nid(), nid()
    vec(
        "call.two_in_one_write",
        "two CALLs in one write: two replies, any order",
        [call(i, "add", ["01", "02"]) + call(j, "add", ["03", "04"])],
        [{"kind": 3, "id": i, "body": "03"}, {"kind": 3, "id": j, "body": "07"}],
        order="any",
    )
    i = nid()
    vec(
        "call.kwargs",
        '["add", [], {"a": 1, "b": 2}]: 3, or ERROR bad_call (no kwargs)',
        [call(i, "add", [], kwargs=h({"a": 1, "b": 2}))],
        [{"kind": [3, 4], "id": i, "body": "03", "error": {"kind": "bad_call"}}],
    )

    big = 4096
    alone = [
        {
            "name": "shutdown.exit0",
            "doc": "SHUTDOWN -> exit status 0",
            "send": [encode_frame(Kind.SHUTDOWN).hex()],
            "expect": [],
            "exit": "zero",
        },
        {
            "name": "shutdown.answers_inflight",
            "doc": "CALL then SHUTDOWN: the call is answered, then exit 0",
            "send": [call(1, "sleep", ["0a"]) + encode_frame(Kind.SHUTDOWN).hex()],
            "expect": [{"kind": 3, "id": 1, "body": "0a"}],
            "exit": "zero",
        },
        {
            "name": "limits.oversize_prefix",
            "doc": f"with SNAKEDEN_MAX_FRAME={big}, a prefix "
            "announcing 1 MiB -> exit non-zero at once, without waiting for the body",
            "max_frame": big,
            "send": [struct.pack(">IBBI", 1 << 20, 2, 0, 1).hex()],
            "expect": [],
            "exit": "nonzero",
        },
        {
            "name": "limits.result_too_large",
            "doc": f"with SNAKEDEN_MAX_FRAME={big}, a result over "
            "it -> ERROR encode, and the worker keeps serving",
            "max_frame": big,
            "send": [
                call(1, "echo", [h("x" * 3000)]) + call(2, "blob", [h(5000)]),
                encode_frame(Kind.PING, 3).hex(),
            ],
            "expect": [
                {"kind": 3, "id": 1, "body": h("x" * 3000)},
                {"kind": 4, "id": 2, "error": {"kind": "encode"}},
                {"kind": 6, "id": 3, "pong": True},
            ],
        },
        {
            "name": "malformed.short_length",
            "doc": "length 2 (< 6) -> exit non-zero",
            "send": ["00000002" + "0500"],
            "expect": [],
            "exit": "nonzero",
        },
        {
            "name": "malformed.unknown_kind",
            "doc": "kind 99 -> exit non-zero",
            "send": [encode_frame(99, 1).hex()],
            "expect": [],
            "exit": "nonzero",
        },
        {
            "name": "malformed.wrong_direction",
            "doc": "a RESULT sent to the worker -> exit non-zero",
            "send": [encode_frame(Kind.RESULT, 1, b"\x01").hex()],
            "expect": [],
            "exit": "nonzero",
        },
    ]
    # Feature vectors: run on the main worker after 'serving', only when its HELLO lists the
    # feature (docs/protocol.md section 6.6 for "session").
    session = []
    i = nid()
    session.append(
        {
            "name": "session.call_in_an_open_session",
            "doc": "SESSION_OPEN 7, then add(1, 2) with the SESSION flag naming session 7 -> 3",
            "send": [encode_frame(Kind.SESSION_OPEN, 7).hex() + session_call_hex(i, 7)],
            "expect": [{"kind": 3, "id": i, "body": "03"}],
        }
    )
    i = nid()
    session.append(
        {
            "name": "session.unknown_session",
            "doc": "a SESSION call naming a session never opened -> ERROR session, not run",
            "send": [session_call_hex(i, 0xFFFFFFF0)],
            "expect": [{"kind": 4, "id": i, "error": {"kind": "session"}}],
        }
    )
    i = nid()
    session.append(
        {
            "name": "session.closed_session",
            "doc": "SESSION_OPEN 8, SESSION_CLOSE 8, then a call in session 8 -> ERROR session",
            "send": [
                encode_frame(Kind.SESSION_OPEN, 8).hex()
                + encode_frame(Kind.SESSION_CLOSE, 8).hex()
                + session_call_hex(i, 8)
            ],
            "expect": [{"kind": 4, "id": i, "error": {"kind": "session"}}],
        }
    )
    i = nid()
    session.append(
        {
            "name": "session.short_body",
            "doc": "a SESSION call whose body is shorter than the 4-byte session id -> ERROR "
            "decode, and the worker keeps serving",
            "send": [
                encode_frame(Kind.CALL, i, b"\x00\x01", SESSION).hex(),
                encode_frame(Kind.PING, i + 1000).hex(),
            ],
            "expect": [
                {"kind": 4, "id": i, "error": {"kind": "decode"}},
                {"kind": 6, "id": i + 1000, "pong": True},
            ],
        }
    )
    doc = {
        "about": (
            "snakeden worker protocol v1 conformance vectors (docs/protocol.md §11). Each vector: "
            "send = frames as hex, written to the worker's read fd in order (each string in one "
            "write); expect = the frames the worker must answer with, in order unless "
            "order=any. An expected frame matches on kind (or any of a list of kinds) and id; "
            "'body' is MessagePack hex compared by decoded value (any encoding of the value, "
            "ext 43 tuples equal to arrays, NaN equal to NaN); 'error' is a subset of the ERROR "
            "map; 'pong' a PONG map with int pid and calls; 'batch' the [ok, value_or_error] "
            "list; 'flags' when given must equal the frame's. 'values' and 'serving' vectors "
            "run one after another on one worker; 'alone' ones each on a fresh worker, with "
            "SNAKEDEN_MAX_FRAME=max_frame if given, and exit = zero/nonzero the status the "
            "worker must end with. skip_if_codec: skip for a worker whose HELLO codecs list it. "
            "'features' maps a HELLO feature to vectors run like 'serving' ones, only on a "
            "worker whose HELLO features list it."
        ),
        "protocol": 1,
        "contract": ["echo", "add", "fail", "sleep", "shout", "blob"],
        "values": values,
        "serving": serving,
        "alone": alone,
        "features": {"session": session},
    }
    HERE.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
