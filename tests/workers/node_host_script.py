"""A host for the orphan test with Node workers: starts a pool of them, has one start a child,
reports the pids, then waits to be killed. Usage: python -m tests.workers.node_host_script"""

from __future__ import annotations

import json
import os
import sys

import snakeden
from tests.test_node_worker import NODE_COMMAND


def main() -> None:
    pool = snakeden.SyncPool(command=NODE_COMMAND, size=2)
    grandchild = pool.call("spawnChild", 3600)
    core = pool._core
    assert core is not None and core.record.watcher is not None
    info = {
        "host": os.getpid(),
        "workers": pool.worker_pids(),
        "grandchild": grandchild,
        "watcher": core.record.watcher.pid,
    }
    print(json.dumps(info), flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main()
