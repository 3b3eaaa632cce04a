"""A host process on a Ray cluster, for the orphan test: connects, starts a pool whose workers
each start a grandchild, reports every process on the nodes, then waits to be killed.
Usage: python -m tests.workers.ray_host <cluster address>"""

from __future__ import annotations

import json
import os
import sys

import ray

import snakeden
from snakeden._ray_launcher import RayWorkerProcess


def main() -> None:
    ray.init(address=sys.argv[1], log_to_driver=False)
    pool = snakeden.SyncPool("snakeden.examples", size=2, backend="ray", ray={"num_cpus": 1})
    assert pool._core is not None
    procs = [w.proc for w in pool._core.checkout.workers.values()]
    assert all(isinstance(p, RayWorkerProcess) for p in procs)
    info = {
        "host": os.getpid(),
        "workers": [p.pid for p in procs if p is not None],
        "actors": [p.actor_pid for p in procs if isinstance(p, RayWorkerProcess)],
        "watchers": [p.watcher_pid for p in procs if isinstance(p, RayWorkerProcess)],
        # Two calls on two idle workers of two: one grandchild each.
        "grandchildren": [f.result(60) for f in [pool.submit("spawn_child", 3600) for _ in "ab"]],
    }
    print(json.dumps(info), flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main()
