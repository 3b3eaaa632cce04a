"""The floor: raw pipe echo of 4-byte big-endian length-prefixed frames between two processes.

Three children: :mod:`floor_child` (Python, run as a script), a C program compiled on the fly
with the system compiler, and ``floor_child.js`` (Node.js, the reference for the Node worker).
No serialisation, no bookkeeping: whatever a pool adds on top of this is its overhead.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from snakeden._bench._common import (
    MEMORY_PRELOAD,
    Context,
    NotApplicable,
    Outcome,
    Settings,
    pin_caller_and_pool,
    record_memory,
)

CHILD_SCRIPT: Final = Path(__file__).with_name("floor_child.py")
NODE_SCRIPT: Final = Path(__file__).with_name("floor_child.js")
PIPE_SIZE: Final = 1 << 20
F_SETPIPE_SZ: Final = 1031
F_GETPIPE_SZ: Final = 1032
_PREFIX: Final = struct.Struct(">I")
_CHUNK: Final = 1 << 16

C_SOURCE: Final = r"""
/* snakeden benchmark floor: echo 4-byte big-endian length-prefixed frames from fd argv[1] to
 * fd argv[2], one write() per frame. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int rfd = atoi(argv[1]), wfd = atoi(argv[2]);
    size_t cap = (size_t)1 << 20, start = 0, end = 0;
    unsigned char *buf = malloc(cap);
    if (buf == NULL) return 3;
    for (;;) {
        size_t avail = end - start;
        if (avail >= 4) {
            const unsigned char *h = buf + start;
            size_t need = 4 + (((size_t)h[0] << 24) | ((size_t)h[1] << 16) |
                               ((size_t)h[2] << 8) | (size_t)h[3]);
            if (avail >= need) {
                if (write_all(wfd, buf + start, need) < 0) return 4;
                start += need;
                if (start == end) start = end = 0;
                continue;
            }
            if (need > cap) {
                unsigned char *bigger = malloc(need);
                if (bigger == NULL) return 3;
                memcpy(bigger, buf + start, avail);
                free(buf);
                buf = bigger;
                cap = need;
                start = 0;
                end = avail;
            }
        }
        if (start > 0) {
            memmove(buf, buf + start, avail);
            start = 0;
            end = avail;
        }
        ssize_t r = read(rfd, buf + end, cap - end);
        if (r == 0) return 0;
        if (r < 0) {
            if (errno == EINTR) continue;
            return 5;
        }
        end += (size_t)r;
    }
}
"""


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def compile_c_echo(dest: Path) -> tuple[str | None, str]:
    """Compile the C floor into ``dest``: (path to the program or None, a note for the report)."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc/gcc) found: the C floor is skipped"
    source = dest / "floor_echo.c"
    program = dest / "floor_echo"
    source.write_text(C_SOURCE)
    try:
        proc = subprocess.run(
            [cc, "-O2", "-o", str(program), str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"the C floor is skipped: running {cc} failed: {exc}"
    if proc.returncode != 0:
        return None, f"the C floor is skipped: {cc} failed: {proc.stderr.strip()[:300]}"
    return str(program), f"C floor compiled with `{cc} -O2`"


def _pipe() -> tuple[int, int, int]:
    """A pipe enlarged to 1 MiB where the kernel allows it: (read fd, write fd, actual size)."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for an unprivileged user: keep the default
    try:
        size = fcntl.fcntl(w, F_GETPIPE_SZ)
    except OSError:
        size = 0
    return r, w, size


class PipeChild:
    """A child process that echoes frames, joined to us by two pipes."""

    def __init__(self, command: list[str], extra_args: list[str] | None = None) -> None:
        down_r, down_w, down_size = _pipe()  # parent -> child
        up_r, up_w, up_size = _pipe()  # child -> parent
        try:
            self.proc = subprocess.Popen(
                [*command, str(down_r), str(up_w), *(extra_args or [])],
                pass_fds=(down_r, up_w),
            )
        except BaseException:
            os.close(down_w)
            os.close(up_r)
            raise
        finally:
            os.close(down_r)
            os.close(up_w)
        self.wfd = down_w
        self.rfd = up_r
        self.pipe_size = min(down_size, up_size)
        self._buf = bytearray()
        self._frames_seen = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, body: bytes) -> None:
        header = _PREFIX.pack(len(body))
        if len(body) <= _CHUNK:
            _write_all(self.wfd, header + body)
        else:
            _write_all(self.wfd, header)
            _write_all(self.wfd, body)

    def read_frame(self) -> bytes | bytearray:
        buf = self._buf
        while len(buf) < 4:
            self._fill()
        (size,) = _PREFIX.unpack_from(buf)
        total = 4 + size
        while len(buf) < total <= _CHUNK:
            self._fill()
        if len(buf) >= total:
            body = bytes(buf[4:total])
            del buf[:total]
            return body
        # A big frame: read the rest straight into a buffer of the exact size.
        body_buf = bytearray(size)
        have = len(buf) - 4
        body_buf[:have] = buf[4:]
        buf.clear()
        view = memoryview(body_buf)
        while have < size:
            got = os.readv(self.rfd, [view[have:]])
            if not got:
                raise EOFError("the floor child closed its pipe")
            have += got
        return body_buf

    def roundtrip(self, body: bytes) -> bytes | bytearray:
        self.send(body)
        return self.read_frame()

    def _fill(self) -> None:
        chunk = os.read(self.rfd, _CHUNK)
        if not chunk:
            raise EOFError("the floor child closed its pipe")
        self._buf += chunk

    def count_frames(self) -> int:
        """Consume every complete frame buffered so far; return how many there were."""
        buf = self._buf
        offset = 0
        count = 0
        while len(buf) - offset >= 4:
            (size,) = _PREFIX.unpack_from(buf, offset)
            if len(buf) - offset < 4 + size:
                break
            offset += 4 + size
            count += 1
        del buf[:offset]
        return count

    def close(self) -> None:
        os.close(self.wfd)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.rfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(children: list[PipeChild], per_child: int, body: bytes) -> None:
    """Pipelined echo: write ``per_child`` frames to each child while reading the replies."""
    frame = _PREFIX.pack(len(body)) + body
    outgoing = {c.wfd: memoryview(frame * per_child) for c in children}
    by_rfd = {c.rfd: c for c in children}
    missing = {c.rfd: per_child for c in children}
    selector = selectors.DefaultSelector()
    for c in children:
        os.set_blocking(c.wfd, False)
        os.set_blocking(c.rfd, False)
        selector.register(c.wfd, selectors.EVENT_WRITE)
        selector.register(c.rfd, selectors.EVENT_READ)
    try:
        while any(missing.values()):
            for key, _ in selector.select(timeout=30):
                fd = int(key.fd)
                if fd in outgoing:
                    view = outgoing[fd]
                    try:
                        sent = os.write(fd, view[:PIPE_SIZE])
                    except BlockingIOError:
                        continue
                    outgoing[fd] = view = view[sent:]
                    if not view:
                        selector.unregister(fd)
                        del outgoing[fd]
                else:
                    try:
                        chunk = os.read(fd, PIPE_SIZE)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise EOFError("a floor child closed its pipe")
                    child = by_rfd[fd]
                    child._buf += chunk
                    missing[fd] -= child.count_frames()
                    if missing[fd] == 0:
                        selector.unregister(fd)
    finally:
        selector.close()
        for c in children:
            os.set_blocking(c.wfd, True)
            os.set_blocking(c.rfd, True)


def run(contender: str, scenario: str, variant: str | None, s: Settings, ctx: Context) -> Outcome:
    if scenario == "stream":
        from snakeden._bench import _stream

        return _stream.floor(s)
    if contender == "floor-c":
        if ctx.c_echo is None:
            raise NotApplicable("the C floor was not compiled")
        command = [ctx.c_echo]
        if scenario in ("coldstart", "memory"):
            raise NotApplicable("a C process cannot import numpy")
    elif contender == "floor-node":
        node = shutil.which("node")
        if node is None:
            raise NotApplicable("node not found on PATH")
        if scenario in ("coldstart", "memory"):
            raise NotApplicable("a Node process cannot import numpy")
        command = [node, str(NODE_SCRIPT)]
    else:
        command = [sys.executable, str(CHILD_SCRIPT)]
    out = Outcome()
    if scenario == "latency":
        child = PipeChild(command)
        try:
            out.info["pipe_size"] = str(child.pipe_size)
            pin_caller_and_pool(out)
            for _ in range(s.warmup_calls):
                child.roundtrip(b"x")
            for _ in range(s.latency_calls):
                t0 = time.perf_counter()
                child.roundtrip(b"x")
                out.add("call_s", time.perf_counter() - t0)
        finally:
            child.close()
    elif scenario == "throughput":
        children = [PipeChild(command) for _ in range(s.size)]
        try:
            pump(children, max(1, s.warmup_calls // s.size), b"x")
            per_child = s.throughput_calls // s.size
            t0 = time.perf_counter()
            pump(children, per_child, b"x")
            elapsed = time.perf_counter() - t0
            out.add("submit_calls_per_s", per_child * s.size / elapsed)
            out.note(
                f"{s.size} children, all frames written while replies are read (pipelined), "
                "one write() per reply"
            )
        finally:
            for c in children:
                c.close()
    elif scenario == "payload":
        child = PipeChild(command)
        try:
            pin_caller_and_pool(out)
            for size, calls in s.payload:
                data = os.urandom(size)
                if len(child.roundtrip(data)) != size:
                    raise RuntimeError("the floor child echoed a wrong frame")
                for _ in range(calls):
                    t0 = time.perf_counter()
                    child.roundtrip(data)
                    out.add(f"rtt_s_{size}", time.perf_counter() - t0)
        finally:
            child.close()
    elif scenario == "coldstart":
        assert variant is not None
        count = int(variant)
        modules = ["numpy", "heavy_import"]  # floor_child.py's directory is on its sys.path
        t0 = time.perf_counter()
        children = [PipeChild(command, modules) for _ in range(count)]
        try:
            for c in children:
                c.send(b"x")
            for c in children:
                c.read_frame()
            out.add("ready_s", time.perf_counter() - t0)
            out.note("one fresh interpreter per worker, each imports numpy and heavy_import")
        finally:
            for c in children:
                c.close()
    elif scenario == "memory":
        child = PipeChild(command, list(MEMORY_PRELOAD))
        try:
            child.roundtrip(b"x")
            record_memory(out, [child.pid])
            out.note("one bare interpreter that imported numpy")
        finally:
            child.close()
    else:
        raise NotApplicable(f"the floor has no {scenario} scenario")
    return out
