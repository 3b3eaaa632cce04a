"""A local control socket for a live view of a pool: ``snakeden.control.serve(pool, path)``.

Opt-in. A Unix socket, mode 0600 (only its owner may connect: it shows commands and pids),
served by one daemon thread of the host: a client connects, may send one request line
(``snapshot``, the default), and gets one JSON line back. ``snakeden top SOCKET`` and
``snakeden stats SOCKET`` are its clients.

The thread also samples the pool's totals each second, so a snapshot carries rates (calls per
second, utilisation over the last ten seconds) that a single reading cannot give.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import stat
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from snakeden import _observe

if TYPE_CHECKING:
    from snakeden._pool import Pool
    from snakeden._syncpool import SyncPool

RATE_WINDOW = 10.0  # seconds of samples behind the rates


def serve(pool: Pool | SyncPool, path: str | os.PathLike[str]) -> ControlServer:
    """Answer snapshot requests about ``pool`` on a Unix socket at ``path`` until
    :meth:`ControlServer.close` (or the end of a ``with`` block). A stale socket file left by a
    dead process is replaced; one that still answers is an error (``OSError``)."""
    return ControlServer(pool, os.fspath(path))


class ControlServer:
    def __init__(self, pool: Pool | SyncPool, path: str) -> None:
        self.path = path
        self.name = pool.config.target or "by-reference"
        self._pool = weakref.ref(pool)
        self._samples: deque[tuple[float, int, float]] = deque()
        _clear_stale(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(path)
            # Before listen(): until then nobody can connect, so there is no moment in which
            # the socket is open to others.
            os.chmod(path, 0o600)
            self._sock.listen(16)
        except BaseException:
            self._sock.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="snakeden-control", daemon=True)
        self._thread.start()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(10)
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # --- the thread --------------------------------------------------------------------------

    def _serve(self) -> None:
        next_sample = 0.0
        while not self._closed:
            now = time.monotonic()
            if now >= next_sample:
                self._sample(now)
                next_sample = now + 1.0
            ready, _, _ = select.select(
                [self._sock.fileno(), self._wake_r], [], [], next_sample - now
            )
            if self._sock.fileno() in ready and not self._closed:
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    continue
                with conn:
                    self._answer(conn)

    def _sample(self, now: float) -> None:
        view = self._read(memory=False)
        if view is None:
            return
        self._samples.append((now, view.calls_total, view.busy_time))
        while self._samples and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()

    def _read(self, *, memory: bool) -> _observe.PoolView | None:
        pool = self._pool()
        core = getattr(pool, "_core", None) if pool is not None else None
        return _observe.read(core, memory=memory) if core is not None else None

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            request = b""
            with contextlib.suppress(TimeoutError):
                while b"\n" not in request and len(request) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
            op = request.strip().decode(errors="replace") or "snapshot"
            if op == "snapshot":
                reply = self.snapshot()
            else:
                reply = {"error": f"unknown request {op!r}; send 'snapshot'"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # the client went away

    def snapshot(self) -> dict[str, Any]:
        """What a client gets: the pool (as :meth:`PoolView.to_json`), its name and rates."""
        view = self._read(memory=True)
        if view is None:
            return {"name": self.name, "state": "not started", "workers": []}
        out = view.to_json()
        out["name"] = self.name
        out["rates"] = self._rates(view)
        return out

    def _rates(self, view: _observe.PoolView) -> dict[str, float]:
        now = time.monotonic()
        if not self._samples:
            return {"calls_per_s": 0.0, "utilization": 0.0, "window_s": 0.0}
        t0, calls0, busy0 = self._samples[0]
        dt = now - t0
        if dt <= 0:
            return {"calls_per_s": 0.0, "utilization": 0.0, "window_s": 0.0}
        live = max(1, sum(1 for w in view.workers if w.state in ("idle", "busy")))
        return {
            "calls_per_s": (view.calls_total - calls0) / dt,
            "utilization": min(1.0, (view.busy_time - busy0) / (dt * live)),
            "window_s": dt,
        }


def _clear_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left by a process that died
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another live control socket")


def request(path: str | os.PathLike[str], op: str = "snapshot", timeout: float = 5.0) -> Any:
    """One request to a control socket; its decoded JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        s.sendall(op.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
