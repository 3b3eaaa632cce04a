"""A host for run-watcher tests: starts a :class:`~snakeden._watcher.Watcher`, processes of the
run and bystanders, reports their pids as one JSON line, then waits to be killed.

Usage::

    python -m tests.workers.watcher_host run <tag> <announced|tagged|exited>
        A worker-like child (own process group, dies with the host like a worker) starts three
        grandchildren: one carrying the tag, one with an empty environment in the worker's
        group, one carrying the tag in a session of its own. The empty-environment one can only
        be found through its group, and each mode leaves one piece of evidence: "announced",
        the worker carries no tag and its tagged grandchild leads a group of its own, but the
        host announced the worker (``Watcher.add``); "tagged", the worker and the tagged
        grandchild in its group carry the tag; "exited", the same, but the worker has already
        exited, leaving a group without a leader.
        Bystanders that must survive: a child forked from the host (host's group; the at-fork
        hook closes its copy of the pipe), an untagged child in a group of its own, and an
        untagged process in a leaderless group of the host's session. On the line "close" from
        stdin, closes the watcher cleanly and reports its exit code.

    python -m tests.workers.watcher_host pool <start_method>
        A real pool between two watchers: one started before the pool (does anything of the
        pool inherit its pipe?) and one for the pool's run tag.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from snakeden._watcher import Watcher

# Runs in the worker-like child: die with the host as workers do, start the grandchildren.
WORKER = r"""
import ctypes, json, os, signal, subprocess, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG, as a worker does
host, tag, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if os.getppid() != host:
    sys.exit(3)
env = dict(os.environ, SNAKEDEN_RUN_TAG=tag)
own_group = 0 if mode == "announced" else None
tagged = subprocess.Popen(["sleep", "1000"], env=env, process_group=own_group)
cleared = subprocess.Popen(["sleep", "1000"], env={})
detached = subprocess.Popen(["sleep", "1000"], env=env, start_new_session=True)
print(json.dumps({"tagged": tagged.pid, "cleared": cleared.pid, "detached": detached.pid}),
      flush=True)
if mode == "exited":
    os._exit(0)
signal.pause()
"""


def pipe_name(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def run(tag: str, mode: str) -> None:
    watcher = Watcher.start(tag)
    assert watcher.enabled and watcher.pid is not None

    ready_r, ready_w = os.pipe()
    forked = os.fork()
    if forked == 0:
        os.write(ready_w, b".")  # the at-fork hooks have run
        signal.pause()  # a bystander in the host's group, until the test kills it
        os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)

    clean_env = {k: v for k, v in os.environ.items() if k != "SNAKEDEN_RUN_TAG"}
    own_group = subprocess.Popen(["sleep", "1000"], env=clean_env, process_group=0)
    # The shell exits at once: its sleep stays behind in a group without a leader.
    leaderless = subprocess.run(
        ["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"],
        env=clean_env,
        process_group=0,
        capture_output=True,
        text=True,
        check=True,
    )

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(os.getpid()), tag, mode],
        env=clean_env if mode == "announced" else dict(clean_env, SNAKEDEN_RUN_TAG=tag),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        process_group=0,  # workers lead their own group
    )
    assert worker.stdout is not None
    grandchildren = json.loads(worker.stdout.readline())
    if mode == "announced":
        watcher.add(worker.pid)
    elif mode == "exited":
        worker.wait()
    info = {
        "host": os.getpid(),
        "watcher": watcher.pid,
        "pipe": pipe_name(watcher._fd),
        "worker": worker.pid,
        **grandchildren,
        "bystanders": [forked, own_group.pid, int(leaderless.stdout)],
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            proc = watcher._proc
            watcher.close()
            assert proc is not None
            print(json.dumps({"watcher_rc": proc.returncode}), flush=True)


def pool(method: str) -> None:
    import snakeden

    # The pool's tag is only known once it runs; a watcher started before it (for no run) shows
    # whether the template and the workers inherit the pipe.
    early = Watcher.start(f"{os.getpid()}-early")
    with snakeden.SyncPool("snakeden.examples", size=2, start_method=method) as p:
        watcher = Watcher.start(p.run_tag)
        info = {
            "host": os.getpid(),
            "watchers": [early.pid, watcher.pid],
            "pipes": [pipe_name(early._fd), pipe_name(watcher._fd)],
            "workers": p.worker_pids(),
            "helpers": list(p._core.launcher.pids()),
            "grandchild": p.call("spawn_child", 3600),
        }
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until killed


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3])
    else:
        pool(sys.argv[2])
