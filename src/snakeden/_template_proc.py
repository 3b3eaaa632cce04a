"""The fork template's own process (``python -m snakeden._template_proc``): import the target
once, then fork a worker per request from the host's :class:`~snakeden._template.ForkLauncher`.

It stays single-threaded and never runs per-worker set-up (see ``_template``'s docstring for the
whole exchange and why threads are refused): a fork copies only the forking thread, so a lock
another thread held stays locked for ever in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any

import msgpack

# A control message (fork request, report) is small: a datagram of at most this many bytes.
MAX_MSG = 64 * 1024
EXIT_TEMPLATE_FAILED = 3


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(msgpack.packb(msg))


def _fail(sock: socket.socket, text: str, type_name: str, message: str, tb: str) -> int:
    """Report a failed start to the host; on stderr only if that fails (the host logs our
    stderr, so printing it too would show the user the traceback twice). The exit code."""
    try:
        _send(sock, {"op": "error", "type": type_name, "message": message, "traceback": tb})
    except OSError:
        print(f"snakeden template: {text}", file=sys.stderr, flush=True)
    return EXIT_TEMPLATE_FAILED


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _fork_safe_pool(pool: dict[str, Any]) -> bool:
    """An idle thread pool that stops before fork() and restarts after it (pthread_atfork):
    OpenBLAS on pthreads, and the Intel and LLVM OpenMP runtimes (MKL's threads are the
    former's). GNU OpenMP (libgomp) is not: a child that uses it after the parent did hangs."""
    api = pool.get("internal_api")
    if api == "openblas":
        return pool.get("threading_layer") == "pthreads"
    if api == "openmp":
        return pool.get("prefix") in ("libiomp", "libomp")
    return False


def thread_warning() -> str | None:
    """``None`` when the native threads now running are safe to fork from; else one line on
    what they are and what to do."""
    extra = _native_threads() - 1
    if extra <= 0:
        return None
    try:
        import threadpoolctl
    except ImportError:
        return (
            f"{extra} native thread(s) besides the main one after import, not identified "
            f"(install threadpoolctl to tell an idle BLAS pool, which is safe, from a hazard); "
            f"if workers hang, use start_method='spawn'"
        )
    try:
        pools: list[dict[str, Any]] = threadpoolctl.threadpool_info()
    except Exception:  # it inspects native libraries: never let that break a start
        pools = []
    # An upper bound: a pool's num_threads counts the main thread and threads not started yet.
    explained = sum(max(0, int(p.get("num_threads") or 1) - 1) for p in pools if _fork_safe_pool(p))
    if extra <= explained:
        return None
    gomp = any(p.get("prefix") == "libgomp" for p in pools)
    return (
        f"{extra - explained} native thread(s) after import that are not an idle BLAS pool "
        + ("(GNU OpenMP's, which does not survive fork?)" if gomp else "(a C extension's?)")
        + "; forked workers get none of them and any lock they held stays locked: start them "
        "in setup(), or use start_method='spawn' if workers hang"
    )


def template_main(argv: list[str]) -> int:
    from snakeden import _worker_os, _worker_tracing, worker

    sock = socket.socket(fileno=int(os.environ["SNAKEDEN_TEMPLATE_FD"]))
    os.set_inheritable(sock.fileno(), False)
    host = os.environ.get("SNAKEDEN_HOST_PID")
    _worker_os.die_with_parent(int(host) if host else None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_os.adopt_host_path()  # before any import; forked workers inherit the result
    target = next((a for a in argv if not a.startswith("--")), "") or None
    preload = next((a.split("=", 1)[1] for a in argv if a.startswith("--preload=")), "")
    try:
        import importlib

        for name in filter(None, preload.split(",")):
            importlib.import_module(name)
        loaded = worker.import_target(target) if target else None
        # Looked up once here, not in every forked worker (a file-system search, ~0.4 ms).
        _worker_tracing.available()
    except BaseException as exc:
        tb = "".join(traceback.format_exception(exc))
        return _fail(sock, f"import failed\n{tb}", type(exc).__qualname__, str(exc), tb)
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        message = (
            f"importing {target!r} (or a preload module) started Python threads ({names}); "
            f"forking a process with threads is unsafe. Start threads in set-up (setup()) "
            f"instead of at import, or use start_method='spawn'"
        )
        return _fail(sock, message, "RuntimeError", message, message)
    ready: dict[str, Any] = {"op": "ready", "pid": os.getpid(), "threads": _native_threads()}
    warning = thread_warning()
    if warning is not None:
        ready["warning"] = warning
    _send(sock, ready)
    return _serve_forks(sock, target, loaded)


def _serve_forks(sock: socket.socket, target: str | None, loaded: Any) -> int:
    import select

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # delivery only; the wakeup fd does the work
    children: set[int] = set()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _ev in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(sock, children)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, 8)
            except InterruptedError:
                continue
            except OSError:
                data, fds = b"", []
            if not data:
                # The host is gone: take every worker with us.
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                return 0
            msg = msgpack.unpackb(data, raw=False)
            if msg.get("op") == "shutdown":
                return 0
            if msg.get("op") == "fork" and len(fds) == 4:
                pid = _fork_worker(sock, (wake_r, wake_w), fds, msg, target, loaded)
                for passed in fds:
                    os.close(passed)
                if pid > 0:
                    children.add(pid)
                    _send(sock, {"op": "forked", "worker_id": msg["worker_id"], "pid": pid})
                # Reap anything that exited while we were forking.
                _reap(sock, children)
            else:
                for passed in fds:
                    os.close(passed)


def _reap(sock: socket.socket, children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        with contextlib.suppress(OSError):
            _send(
                sock, {"op": "exited", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)}
            )


def _fork_worker(  # noqa: PLR0917
    sock: socket.socket,
    wake: tuple[int, int],
    fds: list[int],
    msg: dict[str, Any],
    target: str | None,
    loaded: Any,
) -> int:
    from snakeden import _worker_logging, _worker_os, worker

    template_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        _send(sock, {"op": "forked", "worker_id": msg["worker_id"], "error": str(exc)})
        return -1
    if pid:
        return pid
    # --- in the worker ---
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in wake:
            os.close(fd)
        os.setpgid(0, 0)
        rfd, wfd, out_fd, err_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        worker_id = str(msg["worker_id"])
        os.environ[_worker_logging.LOG_LEVEL_ENV] = str(msg.get("log_level", logging.WARNING))
        os.environ["SNAKEDEN_WORKER_ID"] = worker_id
        os.environ["SNAKEDEN_FDS"] = f"{rfd},{wfd}"
        _worker_os.die_with_parent(template_pid)
        _worker_os.prepare_process()
        code = worker.serve(
            target,
            rfd=rfd,
            wfd=wfd,
            worker_id=worker_id,
            max_frame_size=int(msg["max_frame"]),
            preloaded=loaded,
        )
    except SystemExit as exc:
        # Exit as the interpreter would for an uncaught SystemExit, so forked and spawned
        # workers report the same exit code.
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(template_main(sys.argv[1:]))
