"""Prometheus metrics for pools (``pip install 'snakeden[prometheus]'``).

``snakeden.metrics.register(pool)`` exposes a pool as ``snakeden_*`` metrics read at scrape
time; see docs/operations.md for the list and what to alert on.
"""

from snakeden._metrics import PoolCollector, register, unregister

__all__ = ["PoolCollector", "register", "unregister"]
