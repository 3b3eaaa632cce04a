"""msgpack (what snakeden uses) against msgspec on the frame bodies snakeden sends.

``python benchmarks/codec_compare.py`` (msgspec installed: ``pip install msgspec``; it is not a
dependency of snakeden). For each body, the best of several rounds of encode and of decode, in
µs per body, with the codec configured as the wire format demands:

* snakeden's own ``encode_body``/``decode_body`` (msgpack, ``strict_types``: a tuple travels as
  the EXT_TUPLE extension, docs/protocol.md), the code that runs today;
* msgspec's ``msgpack.Encoder``/``Decoder`` with an ``ext_hook`` that turns EXT_TUPLE back into a
  tuple. msgspec encodes a tuple as a plain array and gives an ``enc_hook`` no say over it, so
  for a body holding tuples msgspec alone writes *another* wire format; the row "msgspec,
  tuples kept" converts the tuples to ``msgspec.msgpack.Ext`` first (a Python walk), which is
  what it would cost to keep the format identical.

Each row says whether msgspec's bytes equal snakeden's (the wire format must not change).
"""

from __future__ import annotations

import os
import sys
import timeit
from collections.abc import Callable
from typing import Any

from snakeden._protocol import EXT_TUPLE, Frame, Kind, decode_body, encode_body

try:
    import msgspec
except ImportError:
    sys.exit("msgspec is not installed: pip install msgspec (for this comparison only)")


def _tuples_as_ext(obj: Any, encode: Callable[[Any], bytes]) -> Any:
    """``obj`` with every tuple replaced by the EXT_TUPLE extension of its items."""
    if type(obj) is tuple:
        return msgspec.msgpack.Ext(EXT_TUPLE, encode([_tuples_as_ext(v, encode) for v in obj]))
    if type(obj) is list:
        return [_tuples_as_ext(v, encode) for v in obj]
    if type(obj) is dict:
        return {k: _tuples_as_ext(v, encode) for k, v in obj.items()}
    return obj


def main() -> None:
    plain = msgspec.msgpack.Encoder()

    def ext_hook(code: int, data: memoryview) -> Any:
        if code == EXT_TUPLE:
            return tuple(decoder.decode(data))
        return msgspec.msgpack.Ext(code, bytes(data))

    decoder = msgspec.msgpack.Decoder(ext_hook=ext_hook)

    def kept(obj: Any) -> bytes:
        return plain.encode(_tuples_as_ext(obj, plain.encode))

    bodies: list[tuple[str, Any]] = [
        ("trivial call ['echo', [b'x'], {}]", ["echo", [b"x"], {}]),
        ("result b'x'", b"x"),
        ("call with 1 KiB bytes", ["echo", [os.urandom(1024)], {}]),
        ("call with 1 MiB bytes", ["echo", [os.urandom(1 << 20)], {}]),
        ("map chunk: 64 x b'x' (BATCH|FLAT)", ["echo", [b"x"] * 64, {}]),
        ("map result: 64 x b'x'", [b"x"] * 64),
        ("map chunk: 64 ints", ["twice", list(range(64)), {}]),
        ("map chunk: 64 tuples (1, 'a', 2.5)", ["add", [(1, "a", 2.5)] * 64, {}]),
        ("call with a dict of 16 str: int", ["f", [{f"k{i}": i for i in range(16)}], {}]),
    ]
    print(f"msgpack {__import__('msgpack').version}, msgspec {msgspec.__version__}")
    print("µs per body, best of 7 rounds; enc/dec = encode / decode")
    header = "| body | bytes | msgpack enc | msgspec enc | msgpack dec | msgspec dec | same bytes |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, obj in bodies:
        ours = encode_body(obj)
        has_tuple = "tuple" in label
        theirs = kept(obj) if has_tuple else plain.encode(obj)
        frame = Frame(kind=Kind.CALL, flags=0, id=1, body=ours)
        assert decode_body(frame) == obj and decoder.decode(ours) == obj, label
        number = 20 if len(ours) > 100_000 else 20_000

        def best(fn: Callable[[], Any], n: int = number) -> float:
            return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6

        enc_ours = best(lambda: encode_body(obj))  # noqa: B023 - used within the iteration
        enc_theirs = best(
            (lambda: kept(obj)) if has_tuple else (lambda: plain.encode(obj))  # noqa: B023
        )
        dec_ours = best(lambda: decode_body(frame))  # noqa: B023
        dec_theirs = best(lambda: decoder.decode(ours))  # noqa: B023
        same = "yes" if theirs == ours else "no"
        if has_tuple:
            same += f" (kept); msgspec alone: {'yes' if plain.encode(obj) == ours else 'no'}"
        print(
            f"| {label} | {len(ours):,} | {enc_ours:.2f} | {enc_theirs:.2f} | "
            f"{dec_ours:.2f} | {dec_theirs:.2f} | {same} |"
        )


if __name__ == "__main__":
    main()
