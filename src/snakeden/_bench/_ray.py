"""snakeden on Ray as a contender: the asyncio ``Pool`` with ``backend="ray"``, on a one-node
Ray started here the way the plain Ray actor contender starts it (``_peers.RayHandle``), so the
rows side by side show what the relay through an actor costs over a plain actor call, and over
the local pool."""

from __future__ import annotations

import asyncio
import importlib

from snakeden._bench._common import Context, NotApplicable, Outcome, Settings
from snakeden._bench._snakeden import _run_async


def run(contender: str, scenario: str, variant: str | None, s: Settings, ctx: Context) -> Outcome:
    if scenario not in ("latency", "throughput"):
        raise NotApplicable("snakeden on Ray is measured on latency and throughput only")
    ray = importlib.import_module("ray")
    ray.init(num_cpus=s.size, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = asyncio.run(_run_async(scenario, variant, s, ctx, ray=True))
    finally:
        ray.shutdown()
    out.info["ray"] = str(ray.__version__)
    out.note("one local Ray node started by ray.init(num_cpus=size); each worker under an actor")
    return out
