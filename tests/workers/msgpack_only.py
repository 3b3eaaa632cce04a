"""A worker as another language would write it (docs/protocol.md section 10, in Python): plain
msgpack and struct, no snakeden, MessagePack only (its HELLO offers no pickle). Serves ``echo``,
which hands back whatever it got, extension values included.

Run as ``python tests/workers/msgpack_only.py ...``; it ignores its arguments."""

from __future__ import annotations

import os
import struct
import sys

import msgpack

HELLO, CALL, RESULT, ERROR, PING, PONG, CANCEL, SHUTDOWN = range(1, 9)
HEADER = struct.Struct(">IBBI")


def send(wfd: int, kind: int, ident: int, value: object) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    data = HEADER.pack(6 + len(body), kind, 0, ident) + body
    while data:
        data = data[os.write(wfd, data) :]


def main() -> int:
    rfd, wfd = (int(x) for x in os.environ["SNAKEDEN_FDS"].split(","))
    hello = {
        "protocol": 1,
        "runtime": "msgpack-only test worker",
        "pid": os.getpid(),
        "commands": ["echo"],
        "worker_id": os.environ.get("SNAKEDEN_WORKER_ID", "?"),
        "codecs": ["msgpack"],
    }
    send(wfd, HELLO, 0, hello)
    buf = b""
    calls = 0
    while True:
        chunk = os.read(rfd, 1 << 16)
        if not chunk:
            return 0
        buf += chunk
        while len(buf) >= 10:
            length, kind, _flags, ident = HEADER.unpack_from(buf)
            if len(buf) < 4 + length:
                break
            body, buf = buf[10 : 4 + length], buf[4 + length :]
            if kind == SHUTDOWN:
                return 0
            if kind == PING:
                send(wfd, PONG, ident, {"pid": os.getpid(), "calls": calls})
            elif kind == CALL:
                # ext_hook keeps extension values (a snakeden tuple) as they came.
                name, args, _kwargs = msgpack.unpackb(body, raw=False, ext_hook=msgpack.ExtType)
                calls += 1
                send(wfd, RESULT, ident, args[0] if name == "echo" else None)
            elif kind != CANCEL:
                return 3


if __name__ == "__main__":
    sys.exit(main())
