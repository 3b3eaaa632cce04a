"""The traced worker as a runtime without the "trace" feature would serve it: its HELLO does
not list it (as an older or other-language worker's), so an instrumented host must send it no
trace context. Patched at import, before the runtime builds its HELLO (and, with a fork
template, before the fork: forked workers inherit the patch)."""

from __future__ import annotations

from snakeden import _worker_tracing
from tests.workers.traced import Traced

_worker_tracing.available = lambda: False

__all__ = ["Traced"]
