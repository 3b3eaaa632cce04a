"""The Python floor: echo 4-byte big-endian length-prefixed frames between two pipe fds.

Run as a *script* (``python floor_child.py RFD WFD [MODULE ...]``), not as part of the package, so
it imports nothing but the standard library and the optional MODULEs (numpy, ``heavy_import``,
which sits next to this file and is therefore importable as a top-level module).
"""

from __future__ import annotations

import importlib
import os
import struct
import sys


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str]) -> int:
    rfd, wfd = int(argv[0]), int(argv[1])
    for name in argv[2:]:
        importlib.import_module(name)
    reader = open(rfd, "rb", buffering=1 << 20, closefd=False)  # noqa: SIM115
    unpack = struct.Struct(">I").unpack
    write = os.write
    while True:
        header = reader.read(4)
        if len(header) < 4:
            return 0
        (size,) = unpack(header)
        body = reader.read(size) if size else b""
        if len(body) < size:
            return 0
        if size <= 65536:
            frame = header + body
            written = write(wfd, frame)
            if written != len(frame):
                _write_all(wfd, frame[written:])
        else:
            _write_all(wfd, header)
            _write_all(wfd, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
