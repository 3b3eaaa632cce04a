"""The stream scenario: items/s of one stream, and of eight in parallel, against the floor of a
child process writing the same items (MessagePack, one length-prefixed frame and one ``write()``
each) over a pipe to a parent that reads and decodes them."""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
import threading
import time
from typing import Final

import msgpack

import snakeden
from snakeden._bench._common import WORKER_MODULE, Outcome, Settings

PARALLEL: Final = 8

_CHILD: Final = r"""
import os, struct, sys, msgpack
n, wfd = int(sys.argv[1]), int(sys.argv[2])
header = struct.Struct(">IBBI")
pack = msgpack.Packer(use_bin_type=True).pack
for i in range(n):
    body = pack(i)
    os.write(wfd, header.pack(6 + len(body), 9, 0, 1) + body)
"""


def _spawn(n: int) -> tuple[subprocess.Popen[bytes], int]:
    r, w = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(n), str(w)], pass_fds=(w,))
    os.close(w)
    return child, r


def _floor_streams(n: int, count: int) -> float:
    """Seconds for ``count`` children to each write ``n`` items and the parent to decode them."""
    children = [_spawn(n) for _ in range(count)]
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytearray] = {}
    got = 0
    t0 = time.perf_counter()
    for _, r in children:
        sel.register(r, selectors.EVENT_READ)
        bufs[r] = bytearray()
    unpack = msgpack.unpackb
    while bufs:
        for key, _ in sel.select():
            fd = int(key.fd)
            data = os.read(fd, 1 << 16)
            if not data:
                sel.unregister(fd)
                os.close(fd)
                del bufs[fd]
                continue
            buf = bufs[fd]
            buf += data
            pos = 0
            while len(buf) - pos >= 4:
                length = int.from_bytes(buf[pos : pos + 4], "big")
                if len(buf) - pos < 4 + length:
                    break
                unpack(bytes(buf[pos + 10 : pos + 4 + length]))
                got += 1
                pos += 4 + length
            del buf[:pos]
    elapsed = time.perf_counter() - t0
    for child, _ in children:
        child.wait()
    if got != n * count:
        raise RuntimeError(f"the floor read {got} items, not {n * count}")
    return elapsed


def floor(s: Settings) -> Outcome:
    out = Outcome()
    n = s.stream_items
    out.add("stream_items_per_s", n / _floor_streams(n, 1))
    out.add("stream8_items_per_s", PARALLEL * n / _floor_streams(n, PARALLEL))
    out.note("a child writes each item as a frame (one write() each); the parent decodes them")
    return out


async def _astream(pool: snakeden.Pool, n: int) -> int:
    got = 0
    async for _ in pool.stream("count", n):
        got += 1
    return got


async def run_async(s: Settings) -> Outcome:
    out = Outcome()
    n = s.stream_items
    async with snakeden.Pool(WORKER_MODULE, size=PARALLEL) as pool:
        await _astream(pool, 1000)  # warm
        t0 = time.perf_counter()
        assert await _astream(pool, n) == n
        out.add("stream_items_per_s", n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        done = await asyncio.gather(*(_astream(pool, n) for _ in range(PARALLEL)))
        out.add("stream8_items_per_s", sum(done) / (time.perf_counter() - t0))
        out.info["pool"] = repr(pool)
    out.note(f"async for over pool.stream(); eight: {PARALLEL} streams on {PARALLEL} workers")
    return out


def run_sync(s: Settings) -> Outcome:
    out = Outcome()
    n = s.stream_items
    with snakeden.SyncPool(WORKER_MODULE, size=PARALLEL) as pool:
        sum(1 for _ in pool.stream("count", 1000))  # warm
        t0 = time.perf_counter()
        assert sum(1 for _ in pool.stream("count", n)) == n
        out.add("stream_items_per_s", n / (time.perf_counter() - t0))
        counts = [0] * PARALLEL

        def reader(i: int) -> None:
            counts[i] = sum(1 for _ in pool.stream("count", n))

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(PARALLEL)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.add("stream8_items_per_s", sum(counts) / (time.perf_counter() - t0))
        out.info["pool"] = repr(pool)
    out.note(f"for over SyncPool.stream(); eight: {PARALLEL} threads, {PARALLEL} workers")
    return out
