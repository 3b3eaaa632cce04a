"""What happens when a call crashes its worker or hangs, and what the other calls see: nothing.

Run: python examples/crash_and_timeout.py
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import hashlib
import logging

import snakeden


def work(n: int) -> str:
    digest = b"snakeden"
    for _ in range(n):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:12]


def segfault() -> None:
    ctypes.string_at(0)  # reads address 0: the worker dies of SIGSEGV


def hang() -> None:
    ctypes.CDLL(None).sleep(3600)  # stuck inside C code, where no Python exception reaches


def on_event(event: snakeden.WorkerEvent) -> None:
    if event.kind in ("crashed", "timed_out", "replaced"):
        print(f"  event: {event.kind} {event.worker_id} {event.detail}")


def main() -> None:
    # Workers' output goes to logging, and a dying worker's stderr is long: the exceptions below
    # carry its last lines anyway.
    logging.getLogger("snakeden.worker").setLevel(logging.ERROR)
    with snakeden.SyncPool(max_workers=2, on_event=on_event) as pool:
        # Other calls keep running on the other worker while one dies.
        others = [pool.submit(work, 20_000) for _ in range(6)]

        print("1. a call that crashes its worker:")
        try:
            pool.call(segfault)
        except snakeden.WorkerCrashed as exc:
            print(f"  WorkerCrashed: exit {exc.exitcode} ({exc.signal_name})")
            print(f"  its stderr, captured: {exc.stderr_tail[0] if exc.stderr_tail else None}")

        print("2. a call that hangs in C, with a timeout:")
        try:
            pool.call(hang, timeout=0.5)
        except snakeden.CallTimeout as exc:  # also a TimeoutError
            print(f"  CallTimeout: {exc}")

        done, _ = cf.wait(others, timeout=60)
        print(f"3. the other calls: {sum(not f.exception() for f in done)} of 6 succeeded")

        pool.wait_ready(timeout=60)  # the replacements are ready
        s = pool.stats()
        print(f"4. crashed={s.calls_crashed} timed_out={s.calls_timed_out} restarts={s.restarts}")
        print(f"   and the pool still serves: {pool.call(work, 10)}")


if __name__ == "__main__":
    main()
