"""A host process for orphan tests: starts a pool, reports its processes, then waits to be
killed. Usage: python -m tests.workers.host_script <start_method>"""

from __future__ import annotations

import json
import sys

import snakeden


def main() -> None:
    pool = snakeden.SyncPool("snakeden.examples", size=2, start_method=sys.argv[1])
    grandchild = pool.call("spawn_child", 3600)
    core = pool._core
    info = {
        "host": __import__("os").getpid(),
        "workers": pool.worker_pids(),
        "helpers": list(core.launcher.pids()),
        "grandchild": grandchild,
        "run_tag": pool.run_tag,
        "watcher": core.record.watcher.pid if core.record.watcher else None,
    }
    print(json.dumps(info), flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main()
