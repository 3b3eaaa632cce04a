"""A minimal worker program that speaks protocol 1 and lists no features in its HELLO (as the
Node.js runtime does): it serves ``echo`` and nothing else."""

from __future__ import annotations

import os
import sys

from snakeden._protocol import (
    FrameDecoder,
    Kind,
    decode_body,
    encode_body,
    encode_frame,
    hello_body,
)


def main() -> int:
    rfd, wfd = (int(x) for x in os.environ["SNAKEDEN_FDS"].split(","))
    hello = hello_body(
        pid=os.getpid(),
        runtime="minimal",
        commands=["echo"],
        worker_id=os.environ.get("SNAKEDEN_WORKER_ID", "?"),
        codecs=["msgpack"],
    )
    os.write(wfd, encode_frame(Kind.HELLO, 0, encode_body(hello)))
    decoder = FrameDecoder()
    while True:
        data = os.read(rfd, 65536)
        if not data:
            return 0
        for frame in decoder.feed(data):
            if frame.kind == Kind.SHUTDOWN:
                return 0
            if frame.kind == Kind.PING:
                pong = encode_body({"pid": os.getpid(), "calls": 0})
                os.write(wfd, encode_frame(Kind.PONG, frame.id, pong))
            elif frame.kind == Kind.CALL:
                _name, args, _kwargs = decode_body(frame)
                os.write(wfd, encode_frame(Kind.RESULT, frame.id, encode_body(args[0])))


if __name__ == "__main__":
    sys.exit(main())
