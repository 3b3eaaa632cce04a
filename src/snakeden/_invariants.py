"""The checkout's bookkeeping checked against itself: ``Checkout.check_invariants()``, which the
test suite runs after every test (conftest) and the chaos storms run mid-storm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snakeden._handle import BUSY, DEAD, IDLE, STOPPING

if TYPE_CHECKING:
    from snakeden._checkout import Checkout


def check_invariants(c: Checkout) -> None:
    """Raise AssertionError if ``c``'s bookkeeping disagrees with itself."""
    from snakeden._checkout import Phase  # here: _checkout imports this module

    with c.lock:
        ws = list(c.workers.values())
        held = sum(w.inflight for w in ws)
        assert held == c.leased, f"leased={c.leased} but workers hold {held}: {ws}"
        for w in c.idle:
            assert w.state is IDLE and w.inflight == 0, f"bad idle worker {w!r}"
            assert c.workers.get(w.id) is w, f"idle worker {w!r} not registered"
        for w in ws:
            assert (w.state is IDLE) == (w in c.idle), f"idle set vs {w!r}"
            if w.state is BUSY:
                assert w.inflight > 0, f"busy with no lease: {w!r}"
                assert not (w.solo and w.inflight > 1), f"a call queued behind solo {w!r}"
            assert w.pipelined <= (w.depth > 1), f"pipelined at depth 1: {w!r}"
            if w.state in (STOPPING, DEAD):
                assert w.cause is not None, f"out of service without a cause: {w!r}"
            assert w.inflight <= max(1, w.depth), f"over depth: {w!r}"
        assert c.scheduled >= 0, f"scheduled={c.scheduled}"
        behind = sum(w.inflight - 1 for w in ws if w.pipelined and w.inflight > 1)
        assert behind == c.behind, f"behind={c.behind} but pipelined workers hold {behind}: {ws}"
        c._check_session_invariants()
        if c.phase is Phase.CLOSED:
            assert not c.waiters and c.leased == 0, f"closed with work: {c!r}"
            assert all(w.state is DEAD for w in ws), f"closed, alive: {ws}"
