"""The Ray backend on a real local multi-node cluster (``conftest.ray_cluster``): the local
pool's promises hold with each worker under a Ray actor on another node. Real actors, real
processes, real signals; the nodes share this machine, so the tests can look at every process
in the process table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

import snakeden
from snakeden._core import PoolCore
from snakeden._ray_launcher import RayWorkerProcess
from tests.conftest import run, start_host_script, survivors
from tests.rendezvous import Rendezvous
from tests.test_crash_matrix import CALL_PHASE_EXPECTED, TIMEOUT, _check
from tests.workers.faults import FAULTS

FAULTS_MODULE = "tests.workers.faults"
GATED_MODULE = "tests.workers.gated"
RAY = snakeden.RayOptions(num_cpus=1)


def ray_processes(core: PoolCore) -> dict[str, list[int]]:
    """The live workers' processes on the nodes: worker, its actor, the actor's run watcher."""
    found: dict[str, list[int]] = {"workers": [], "actors": [], "watchers": []}
    with core.checkout.lock:
        procs = [w.proc for w in core.checkout.workers.values() if w.proc is not None]
    for proc in procs:
        assert isinstance(proc, RayWorkerProcess)
        if not proc.exited:
            found["workers"].append(proc.pid)
            found["actors"].append(proc.actor_pid)
            if proc.watcher_pid is not None:
                found["watchers"].append(proc.watcher_pid)
    return found


def assert_all_gone(processes: dict[str, list[int]]) -> None:
    for what, pids in processes.items():
        assert not survivors(pids), f"{what} left behind after close(): {pids}"


def node_of(core: PoolCore, pid: int) -> str:
    with core.checkout.lock:
        for w in core.checkout.workers.values():
            if w.proc is not None and w.proc.pid == pid:
                assert w.proc.node is not None
                return w.proc.node
    raise AssertionError(f"no worker with pid {pid}")


def test_async_pool_calls_workers_on_two_nodes_and_leaves_nothing(ray_cluster: Any) -> None:
    async def body() -> None:
        pool = snakeden.Pool(FAULTS_MODULE, size=2, backend="ray", ray=RAY)
        async with pool:
            assert await pool.call("echo", {"a": [1, 2]}) == {"a": [1, 2]}
            assert await asyncio.gather(*(pool.call("echo", i) for i in range(50))) == list(
                range(50)
            )
            nodes = pool.stats().nodes
            # One CPU per node and per worker: one worker on each of the two nodes.
            assert sorted(nodes.values()) == [1, 1], nodes
            assert pool._core is not None
            procs = ray_processes(pool._core)
            assert len(procs["workers"]) == 2 and len(procs["actors"]) == 2
        assert_all_gone(procs)

    run(body())


def test_large_frames_pass_byte_for_byte_both_ways(ray_cluster: Any) -> None:
    """Larger than every pipe and than what the actor holds for a slow host: the relay's
    buffering and back-pressure on both sides."""
    data = os.urandom(24 << 20)

    async def body() -> None:
        async with snakeden.Pool(FAULTS_MODULE, size=1, backend="ray", ray=RAY) as pool:
            results = await asyncio.gather(*(pool.call("echo", data) for _ in range(2)))
            assert all(r == data for r in results)

    run(body())


def test_sync_pool_basic_call_and_close(ray_cluster: Any) -> None:
    with snakeden.SyncPool(FAULTS_MODULE, size=1, backend="ray", ray={"num_cpus": 1}) as pool:
        assert pool.call("echo", "sync") == "sync"
        assert list(pool.map("echo", range(20))) == list(range(20))
        assert pool._core is not None
        procs = ray_processes(pool._core)
        assert len(pool.stats().nodes) == 1
    assert_all_gone(procs)


def test_crash_matrix_each_fault_fails_only_its_call(ray_cluster: Any) -> None:
    """The local crash matrix's run phase, through the relay: the exact error and signal name,
    the calls beside it untouched, the pool back at full size."""

    async def body() -> None:
        async with snakeden.Pool(
            FAULTS_MODULE, size=2, serializer="pickle", backend="ray", ray=RAY
        ) as pool:
            for kind in FAULTS:
                bystanders = [asyncio.create_task(pool.call("echo", i)) for i in range(10)]
                with pytest.raises(Exception) as info:  # _check: the exact type
                    await pool.call("run_fault", kind, timeout=TIMEOUT)
                _check(info.value, CALL_PHASE_EXPECTED["run"][kind])
                assert await asyncio.gather(*bystanders) == list(range(10)), kind
                await pool.wait_ready(timeout=60)
                assert pool.stats().workers == 2, kind
            assert pool.stats().calls_crashed == 3  # os_exit, segfault, sigkill
            assert pool.stats().calls_timed_out == 1  # hang

    run(body())


def test_a_signal_from_outside_names_the_signal(ray_cluster: Any) -> None:
    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp, Rendezvous(tmp) as there:
            async with snakeden.Pool(FAULTS_MODULE, size=1, backend="ray", ray=RAY) as pool:
                call = asyncio.create_task(pool.call("block", str(there)))
                pid = int(await there.wait_async())
                os.kill(pid, signal.SIGTERM)  # the nodes share this machine
                with pytest.raises(snakeden.WorkerCrashed) as info:
                    await call
                assert type(info.value) is snakeden.WorkerCrashed
                assert info.value.signal_name == "SIGTERM"
                assert "SIGTERM(-15)" in str(info.value)
                assert await pool.call("echo", 1) == 1

    run(body())


def test_sync_timeout_kills_the_worker_and_replaces_it(ray_cluster: Any) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Rendezvous(tmp) as there,
        snakeden.SyncPool(FAULTS_MODULE, size=1, backend="ray", ray=RAY) as pool,
    ):
        if True:
            first = pool.call("getpid")
            with pytest.raises(snakeden.CallTimeout, match="did not finish within"):
                pool.call("block", str(there), timeout=TIMEOUT)
            assert int(there.wait()) == first
            assert not survivors([first]), "the timed-out worker still runs"
            assert pool.call("getpid") != first
            with pytest.raises(snakeden.WorkerCrashed, match=r"SIGKILL\(-9\)"):
                pool.call("run_fault", "sigkill")
            assert pool.call("echo", 2) == 2
            assert pool.stats().calls_timed_out == 1


@contextlib.contextmanager
def gated(n: int) -> Iterator[tuple[list[Rendezvous], list[str]]]:
    """``n`` rendezvous (a ``gate`` call says it runs) and ``n`` gates (it waits there)."""
    with tempfile.TemporaryDirectory() as tmp:
        rvs = [Rendezvous(tmp, f"r{i}") for i in range(n)]
        gates = [os.path.join(tmp, f"go{i}") for i in range(n)]
        for g in gates:
            os.mkfifo(g)
        try:
            yield rvs, gates
        finally:
            for r in rvs:
                r.close()


def open_gate(path: str) -> None:
    fd = os.open(path, os.O_WRONLY)  # returns once the call waits at the gate
    os.write(fd, b"go")
    os.close(fd)


def test_node_loss_fails_its_call_promptly_and_the_pool_recovers(ray_cluster: Any) -> None:
    """A node dies (killed, no goodbye) while a call runs there: that call fails with
    WorkerLost naming the node, a queued call completes on another node, and a replacement
    starts as soon as a node with room joins."""

    async def body() -> None:
        doomed = ray_cluster.add_node(num_cpus=1)
        ray_cluster.wait_for_nodes()
        joined = None
        try:
            with gated(3) as (rvs, gates):
                async with snakeden.Pool(
                    GATED_MODULE, size=3, backend="ray", ray=RAY, start_timeout=120
                ) as pool:
                    assert pool._core is not None
                    # Three one-CPU workers on three one-CPU nodes: one on the doomed node.
                    calls = [
                        asyncio.create_task(pool.call("gate", str(r), g))
                        for r, g in zip(rvs, gates, strict=True)
                    ]
                    pids = [int(await r.wait_async()) for r in rvs]
                    nodes = [node_of(pool._core, pid) for pid in pids]
                    assert doomed.node_id in nodes, nodes
                    lost = nodes.index(doomed.node_id)
                    queued = asyncio.create_task(pool.call("echo", "queued"))
                    t0 = time.monotonic()
                    ray_cluster.remove_node(doomed, allow_graceful=False)
                    with pytest.raises(snakeden.WorkerLost) as info:
                        await calls[lost]
                    took = time.monotonic() - t0
                    assert info.value.node == doomed.node_id
                    assert f"its Ray node {doomed.node_id}" in str(info.value)
                    assert "is gone" in str(info.value)
                    # The calls elsewhere were untouched; the queued one runs once one is done.
                    assert not queued.done()
                    for i, g in enumerate(gates):
                        if i != lost:
                            await asyncio.to_thread(open_gate, g)
                            assert await calls[i] == 2
                    assert await queued == "queued"
                    # No room is left for the replacement until a node joins.
                    joined = ray_cluster.add_node(num_cpus=1)
                    await pool.wait_ready(3, timeout=120)
                    nodes_now = pool.stats().nodes
                    assert doomed.node_id not in nodes_now, nodes_now
                    assert nodes_now.get(joined.node_id) == 1, nodes_now
                    assert await asyncio.gather(*(pool.call("echo", i) for i in range(9))) == list(
                        range(9)
                    )
                    procs = ray_processes(pool._core)
            assert_all_gone(procs)
            print(f"node loss seen by the caller in {took:.2f}s")  # for the report, not checked
        finally:
            if joined is not None:
                ray_cluster.remove_node(joined)

    run(body())


def test_the_pool_grows_onto_a_node_that_joins(ray_cluster: Any) -> None:
    """max_size: calls queue, the pool grows onto the two nodes there are, and its third
    worker starts once a third node joins; all three calls then run at once."""

    async def body() -> None:
        joined = None
        try:
            with gated(3) as (rvs, gates):
                async with snakeden.Pool(
                    GATED_MODULE, size=1, max_size=3, backend="ray", ray=RAY, start_timeout=120
                ) as pool:
                    calls = [
                        asyncio.create_task(pool.call("gate", str(r), g))
                        for r, g in zip(rvs, gates, strict=True)
                    ]
                    await rvs[0].wait_async()
                    await rvs[1].wait_async()  # grown onto the second node
                    assert sorted(pool.stats().nodes.values()) == [1, 1]
                    joined = ray_cluster.add_node(num_cpus=1)
                    await rvs[2].wait_async()  # the third call runs: on the new node
                    assert pool.stats().nodes.get(joined.node_id) == 1, pool.stats().nodes
                    for g in gates:
                        await asyncio.to_thread(open_gate, g)
                    assert await asyncio.gather(*calls) == [2, 2, 2]
        finally:
            if joined is not None:
                ray_cluster.remove_node(joined)

    run(body())


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"target": "tests.workers.import_exception"}, "RuntimeError: injected fault"),
        (
            {"target": FAULTS_MODULE, "python": "/nonexistent/python"},
            "cannot start worker w",
        ),
    ],
)
def test_a_worker_that_cannot_start_on_its_node_says_why(
    ray_cluster: Any, options: dict[str, Any], text: str
) -> None:
    target = options.pop("target")
    with pytest.raises(snakeden.WorkerStartError, match="failed to start") as info:
        snakeden.SyncPool(target, size=1, backend="ray", ray=RAY, **options)
    assert text in str(info.value)


def test_a_host_killed_outright_leaves_nothing_on_the_nodes(ray_cluster: Any) -> None:
    """SIGKILL to the host: Ray ends the dead driver's actors, each worker dies with its actor
    (parent-death signal) and each actor's run watcher kills what the worker started."""
    host, info = start_host_script("tests.workers.ray_host", ray_cluster.address)
    try:
        everything = [
            p for key in ("workers", "actors", "watchers", "grandchildren") for p in info[key]
        ]
        assert sorted(survivors(everything, timeout=0)) == sorted(everything)  # all alive
        host.kill()
        host.wait(60)
        assert not survivors(everything, timeout=60), info
    finally:
        host.kill()
        host.wait(60)


def test_a_session_keeps_its_worker_on_ray_and_is_lost_loudly(ray_cluster: Any) -> None:
    """Sessions' frames pass the relay unchanged: state stays in one worker on one node, and a
    session whose worker dies is lost, never silently moved to a fresh worker."""

    async def body() -> None:
        sessions = "tests.workers.sessions"
        async with snakeden.Pool(sessions, size=2, backend="ray", ray=RAY) as pool:
            async with pool.session() as s:
                assert await s.call("put", "a", 1) == 1
                assert await s.call("put", "b", [2]) == 2
                sid, pid, keys = await s.call("whoami")
                assert sid == s.id and keys == ["a", "b"]
                assert pool._core is not None and node_of(pool._core, pid) in pool.stats().nodes
                with pytest.raises(snakeden.WorkerCrashed):
                    await s.call("die")
                with pytest.raises(snakeden.SessionLost):
                    await s.call("get", "a")
            assert (await pool.call("whoami"))[0] is None  # the pool serves on

    run(body())


def test_a_stream_flows_through_the_relay_with_flow_control(ray_cluster: Any) -> None:
    """Stream frames (items, credit, end, cancel) pass the relay unchanged: items in order, an
    exception mid-stream where it happened, and a reader that stops early leaves a worker that
    serves the next call."""

    async def body() -> None:
        async with snakeden.Pool(
            "tests.workers.streams", size=1, backend="ray", ray=RAY, stream_window=8
        ) as pool:
            got = [x async for x in pool.stream("count", 500)]
            assert got == list(range(500))  # 500 items through a window of 8: credit flows
            seen: list[int] = []
            with pytest.raises(snakeden.RemoteError):
                async for x in pool.stream("fail_after", 3):
                    seen.append(x)
            assert seen == [0, 1, 2]
            async with pool.stream("endless") as s:
                async for x in s:
                    if x == 5:
                        break  # leaving the block ends the generator in the worker
            assert await pool.call("echo", "after") == "after"

    run(body())
