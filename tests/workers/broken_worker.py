"""Deliberately broken workers, one fault each, for the conformance kit's own tests:
``python -m tests.workers.broken_worker <fault>``. Built on the real framing code, with the
fault injected where a hand-written runtime in another language would get it wrong."""

from __future__ import annotations

import os
import sys

from snakeden._protocol import (
    FrameDecoder,
    Kind,
    decode_body,
    encode_body,
    encode_frame,
    error_body,
    hello_body,
)

COMMANDS = ["add", "blob", "echo", "fail", "shout", "sleep"]


def main(fault: str) -> int:
    rfd, wfd = (int(x) for x in os.environ["SNAKEDEN_FDS"].split(","))
    hello = encode_frame(
        Kind.HELLO,
        0,
        encode_body(
            hello_body(
                pid=os.getpid(),
                runtime="broken",
                commands=COMMANDS,
                worker_id=os.environ["SNAKEDEN_WORKER_ID"],
                codecs=["msgpack"],
            )
        ),
    )
    if fault == "bad_length":
        # The prefix counts the 4 prefix bytes too: 4 more than the frame really has.
        n = int.from_bytes(hello[:4], "big") + 4
        hello = n.to_bytes(4, "big") + hello[4:]
    if fault == "stdout_frames":
        os.write(1, hello)  # the classic mistake: frames on stdout
    elif fault != "no_hello":
        os.write(wfd, hello)
    decoder = FrameDecoder()
    while chunk := os.read(rfd, 65536):
        for frame in decoder.feed(chunk):
            if frame.kind == Kind.SHUTDOWN:
                return 0
            if frame.kind == Kind.PING:
                os.write(
                    wfd, encode_frame(Kind.PONG, frame.id, encode_body({"pid": 1, "calls": 0}))
                )
            elif frame.kind == Kind.CALL:
                name, args, _ = decode_body(frame)
                ident = frame.id + 1 if fault == "wrong_id" else frame.id
                if name == "add":
                    body, kind = encode_body(args[0] + args[1]), Kind.RESULT
                elif name == "echo":
                    body, kind = encode_body(args[0]), Kind.RESULT
                else:
                    body = encode_body(error_body(kind="user", type_name="E", message="no"))
                    kind = Kind.ERROR
                os.write(wfd, encode_frame(kind, ident, body))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
