"""A worker module without a single @snakeden.command: legal, for calls by reference."""

from __future__ import annotations


def double(x: int) -> int:
    return 2 * x
