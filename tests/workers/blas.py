"""A numpy worker: its BLAS pool is started in the fork template by importing numpy."""

from __future__ import annotations

import numpy

import snakeden


@snakeden.command
def matmul_sum(n: int) -> float:
    a = numpy.ones((n, n))
    return float((a @ a).sum())  # large enough for OpenBLAS to use its threads
