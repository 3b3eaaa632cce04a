"""One local multi-node Ray cluster shared by every Ray test (starting one costs seconds).

``ray.cluster_utils.Cluster`` runs a head node (no CPUs: only this driver) and two one-CPU
nodes on this machine, so a pool of ``num_cpus=1`` workers is placed deterministically: one per
node. Health checks are tuned so that the cluster declares a removed node dead within a couple of
seconds. Tests that add nodes remove them again; a test that removes one of the two shared nodes
must add it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need ray: pip install 'snakeden[ray]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")

HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH}
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
