"""A drop-in for ProcessPoolExecutor users: remote exceptions keep their type, tuples stay tuples,
and pickle is used only where the worker offers it. Real worker processes throughout.

Where ``concurrent.futures.ProcessPoolExecutor`` defines the behaviour, the same expectation is
run against it too (the ``executor`` fixture); where snakeden deliberately differs
(``sys.exit()`` in a command), the test says so.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import multiprocessing
import os
import pathlib
import pickle
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

import snakeden
from snakeden._calls import encode_call, error_from_body
from snakeden._hello import check_hello
from snakeden._protocol import Frame, Kind, PickledException, encode_body
from tests.conftest import run
from tests.workers import errors
from tests.workers.errors import AppError, CodedError

W = "tests.workers.errors"
HIDDEN = "tests.workers.errors_hidden"
SERIALIZERS = ["msgpack", "pickle"]
Call = tuple[str, tuple[Any, ...]]


def raised_async(serializer: str, calls: list[Call]) -> list[BaseException | None]:
    """What each call raised, one after the other on one asyncio Pool."""

    async def body() -> list[BaseException | None]:
        out: list[BaseException | None] = []
        async with snakeden.Pool(W, size=1, serializer=serializer) as pool:
            for name, args in calls:
                try:
                    await pool.call(name, *args)
                except Exception as exc:
                    out.append(exc)
                else:
                    out.append(None)
        return out

    return run(body())


def raised_sync(serializer: str, calls: list[Call]) -> list[BaseException | None]:
    """What each call raised, through SyncPool.submit(...).result() as an Executor user does."""
    with snakeden.SyncPool(W, size=1, serializer=serializer) as pool:
        return [pool.submit(name, *args).exception(60) for name, args in calls]


FRONTS = {"async": raised_async, "sync": raised_sync}


def check_remote(exc: BaseException | None, cls: type[Exception], serializer: str) -> Any:
    """``exc`` is a ``cls`` with its remote traceback chained, as ProcessPoolExecutor raises it;
    with MessagePack also a RemoteError (pickle: the original object, not a RemoteError)."""
    assert isinstance(exc, cls), f"{exc!r} is not a {cls.__name__}"
    assert isinstance(exc.__cause__, snakeden.RemoteTraceback)
    assert "tests/workers/errors.py" in exc.__cause__.tb
    if serializer == "pickle":
        assert type(exc) is cls
        assert not isinstance(exc, snakeden.RemoteError)
    else:
        assert isinstance(exc, snakeden.RemoteError)
        assert type(exc).__name__ == f"_Remote_{cls.__name__}"
        assert exc.type_name == cls.__qualname__
        assert exc.remote_traceback == exc.__cause__.tb
    return exc


# --- exception identity -------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("front", list(FRONTS))
def test_remote_exceptions_keep_their_type(front: str, serializer: str, tmp_path: Any) -> None:
    missing = str(tmp_path / "missing")
    got = FRONTS[front](
        serializer,
        [
            ("divide", (1, 0)),
            ("lookup", ("k",)),
            ("open_missing", (missing,)),
            ("raise_oserror", (errno.EACCES,)),
            ("app_error", ("app says no",)),
            ("lookup", ((1, ("nested",)),)),
        ],
    )
    zero, key, notfound, access, app, tuple_key = got

    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as local:
        expected = str(local)
    exc = check_remote(zero, ZeroDivisionError, serializer)
    assert str(exc) == expected and exc.args == (expected,)

    exc = check_remote(key, KeyError, serializer)
    assert exc.args == ("k",) and str(exc) == "'k'"

    # The OSError subclass errno picked, with errno, strerror and filename: as raised locally.
    exc = check_remote(notfound, FileNotFoundError, serializer)
    assert (exc.errno, exc.filename) == (errno.ENOENT, missing)
    assert str(exc) == f"[Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}: {missing!r}"
    exc = check_remote(access, PermissionError, serializer)
    assert (exc.errno, exc.strerror, exc.filename) == (errno.EACCES, "made up", "/some/path")

    exc = check_remote(app, AppError, serializer)
    assert exc.args == ("app says no",) and str(exc) == "app says no"

    exc = check_remote(tuple_key, KeyError, serializer)
    assert exc.args == ((1, ("nested",)),)  # tuples stay tuples inside args too
    assert type(exc.args[0][1]) is tuple

    if serializer == "msgpack":
        assert zero.command == "divide"  # type: ignore[union-attr]
        # One combined class per remote type.
        assert type(key) is type(tuple_key)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_custom_constructor_signature_is_still_constructed(serializer: str) -> None:
    # pickle cannot rebuild CodedError (its args are not its constructor's arguments; a
    # ProcessPoolExecutor breaks on it), so both serializers build it without calling __init__
    # and restore its attributes.
    coded, locked = raised_sync(serializer, [("coded_error", (7, "bad")), ("locked_error", ("l",))])
    assert isinstance(coded, CodedError) and isinstance(coded, snakeden.RemoteError)
    assert (coded.code, coded.detail) == (7, "bad")
    assert coded.args == ("7: bad",) and str(coded) == "7: bad"
    assert isinstance(coded.__cause__, snakeden.RemoteTraceback)
    # An attribute neither codec can carry (a lock) is not sent: the constructor, which accepts
    # the args, ran on the host and made its own.
    assert isinstance(locked, errors.LockedError) and isinstance(locked, snakeden.RemoteError)
    assert str(locked) == "l" and isinstance(locked.lock, type(threading.Lock()))


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_class_not_importable_on_the_host_falls_back_to_remote_error(
    serializer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, HIDDEN, raising=False)
    local, hidden = raised_sync(
        serializer, [("local_error", ("loc",)), ("worker_only_error", ("hid",))]
    )
    assert type(local) is snakeden.RemoteError
    assert local.type_name == "local_error.<locals>.LocalError"
    assert str(local) == (
        "local_error.<locals>.LocalError: loc (raised by command 'local_error' in the worker)"
    )
    assert "raise LocalError(message)" in local.remote_traceback
    if serializer == "msgpack":
        # MessagePack only looks in modules the host already imported: no import side effects.
        assert type(hidden) is snakeden.RemoteError
        assert hidden.type_name == "HiddenError" and hidden.remote_message == "hid"
        assert HIDDEN not in sys.modules
    else:
        # Unpickling imports the class's module, as with ProcessPoolExecutor.
        assert type(hidden).__qualname__ == "HiddenError" and str(hidden) == "hid"
        assert HIDDEN in sys.modules


# --- the same expectations as ProcessPoolExecutor -------------------------------------------------


@pytest.fixture(params=["ProcessPoolExecutor", "SyncPool-msgpack", "SyncPool-pickle"])
def executor(request: pytest.FixtureRequest) -> Iterator[cf.Executor]:
    if request.param == "ProcessPoolExecutor":
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            yield ex
    else:
        with snakeden.SyncPool(W, size=1, serializer=request.param.split("-")[1]) as pool:
            yield pool


@pytest.mark.parametrize("chunksize", [1, 2])
def test_executor_submit_and_map_raise_the_remote_type(
    executor: cf.Executor, chunksize: int
) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        executor.submit(errors.divide, 1, 0).result(60)
    assert isinstance(info.value.__cause__, Exception)  # the remote traceback
    with pytest.raises(KeyError) as key_info:
        executor.submit(errors.lookup, "k").result(60)
    assert key_info.value.args == ("k",)
    with pytest.raises(AppError, match=r"^no$"):
        executor.submit(errors.app_error, "no").result(60)

    # map re-raises at the failed item: the results before it come out first.
    results = executor.map(errors.invert, [1, 2, 0, 4], chunksize=chunksize)
    assert next(results) == 1.0
    assert next(results) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_async_map_raises_the_failed_items_type() -> None:
    async def body() -> None:
        for serializer in SERIALIZERS:
            async with snakeden.Pool(W, size=1, serializer=serializer) as pool:
                for chunksize in (1, 3):
                    with pytest.raises(ZeroDivisionError) as info:
                        await pool.map("invert", [1, 2, 0, 4], chunksize=chunksize)
                    assert isinstance(info.value.__cause__, snakeden.RemoteTraceback)
                    # pickle: the original object, from a batch reply too
                    assert (type(info.value) is ZeroDivisionError) == (serializer == "pickle")
                with pytest.raises(KeyError) as key:
                    await pool.map("lookup", ["a"], chunksize=2)
                assert key.value.args == ("a",)

    run(body())


# --- SystemExit and KeyboardInterrupt ---------------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_sys_exit_in_a_command_fails_the_call_not_the_worker(serializer: str) -> None:
    # ProcessPoolExecutor re-raises the SystemExit itself in the caller, where an
    # `except Exception` misses it and it can end the host. snakeden keeps the call's failure an
    # Exception: a RemoteError naming SystemExit and the exit code; the worker keeps serving.
    with snakeden.SyncPool(W, size=1, serializer=serializer) as pool:
        pid = pool.call(os.getpid)
        for name, args in [("exit_with", (3,)), ("async_exit_with", (4,)), ("exit_with", ())]:
            with pytest.raises(snakeden.RemoteError) as info:
                pool.call(name, *args)
            assert not isinstance(info.value, SystemExit)
            assert info.value.type_name == "SystemExit"
        assert str(info.value) == (
            "SystemExit: exit code None (raised by command 'exit_with' in the worker)"
        )
        with pytest.raises(snakeden.RemoteError, match=r"^SystemExit: exit code 5 \(raised"):
            list(pool.map("exit_with", [5, 6], chunksize=2))
        # A KeyboardInterrupt can only come from the command's own code (workers ignore SIGINT);
        # re-raised as itself it would look like Ctrl-C in the host.
        with pytest.raises(snakeden.RemoteError) as kb:
            pool.call("interrupt")
        assert not isinstance(kb.value, KeyboardInterrupt)
        assert kb.value.type_name == "KeyboardInterrupt"
        assert str(kb.value) == "KeyboardInterrupt (raised by command 'interrupt' in the worker)"
        assert pool.call(os.getpid) == pid
        s = pool.stats()
        assert (s.calls_failed, s.calls_crashed, s.restarts) == (5, 0, 0)  # the batch is one call


# --- tuples over MessagePack ----------------------------------------------------------------------


def test_tuples_round_trip_in_arguments_results_and_map() -> None:
    value = {"t": (1, (2, "x")), "l": [(), [(b"b",)]], (1, 2): "a tuple key"}

    async def body() -> None:
        async with snakeden.Pool(W, size=2) as pool:
            out = await pool.call("echo", value)
            assert out == value
            assert type(out["t"]) is tuple and type(out["t"][1]) is tuple
            assert type(out["l"]) is list and type(out["l"][1][0]) is tuple
            # What the command received, types included; the argument list itself may be a
            # list or a tuple (the envelope), the values in it are what was sent.
            args, kwargs = await pool.call("describe", (1, (2,)), [3, (4,)], k=(5,))
            assert args == [["tuple", (1, (2,))], ["list", [3, (4,)]]] and kwargs == {"k": "tuple"}
            items = [(1, 2), [3, (4,)], ((),)]
            for chunksize in (1, 2):
                got = await pool.map("echo", items, chunksize=chunksize)
                assert got == items and [type(x) for x in got] == [tuple, list, tuple]
                got = await pool.map("describe", [((1,), [2])], star=True, chunksize=chunksize)
                assert got == [([["tuple", (1,)], ["list", [2]]], {})]

    run(body())
    with snakeden.SyncPool(W, size=1) as pool:
        assert list(pool.map("echo", [(1,), [2]], chunksize=2)) == [(1,), [2]]


def test_the_call_envelope_stays_plain_arrays() -> None:
    # A worker in another language reads [command, args, kwargs] and each batch item's argument
    # list as plain arrays; only tuples inside the values travel as the tuple extension type.
    _, _, body = encode_call("add", (1, 2), {}, pickle=False, max_frame_size=1 << 20)
    assert body == bytes.fromhex("93 a3616464 92 01 02 80")  # docs/protocol.md section 9
    _, _, body = encode_call("f", (1, (2, 3)), {}, pickle=False, max_frame_size=1 << 20)
    assert msgpack.unpackb(body) == ["f", [1, msgpack.ExtType(43, b"\x92\x02\x03")], {}]
    batch = [(9,), ((1, 2),)]
    _, _, body = encode_call("f", batch, {}, pickle=False, max_frame_size=1 << 20, batch=True)
    assert msgpack.unpackb(body) == ["f", [[9], [msgpack.ExtType(43, b"\x92\x01\x02")]], {}]


def test_a_msgpack_only_worker_passes_tuples_through(tmp_path: pathlib.Path) -> None:
    # A runtime that does not know the tuple extension keeps it as an opaque value; echoed back,
    # the host decodes it as the tuple it was.
    with snakeden.SyncPool(size=1, python=str(_msgpack_only_interpreter(tmp_path))) as pool:
        assert pool.call("echo", [(1, "a"), {"k": (2,)}]) == [(1, "a"), {"k": (2,)}]


# --- pickle only where the worker offers it ------------------------------------------------------


def _msgpack_only_interpreter(tmp_path: pathlib.Path) -> pathlib.Path:
    """A stand-in for another runtime: a "python" that runs tests/workers/msgpack_only.py."""
    worker = pathlib.Path(__file__).parent / "workers" / "msgpack_only.py"
    script = tmp_path / "msgpack-only-runtime"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{worker}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_pickle_pool_refuses_a_worker_without_pickle_at_start(tmp_path: pathlib.Path) -> None:
    python = str(_msgpack_only_interpreter(tmp_path))

    async def body() -> None:
        with pytest.raises(snakeden.WorkerStartError) as info:
            async with snakeden.Pool(size=1, python=python, serializer="pickle"):
                pass
        assert "does not offer the pickle serializer" in str(info.value)
        assert "use serializer='msgpack' or a Python worker" in str(info.value)
        assert "msgpack-only test worker" in str(info.value)

    run(body())


def _hello(**fields: Any) -> Frame:
    body = {"protocol": 1, "runtime": "r 1", "pid": 1, "commands": ["echo"], "worker_id": "w"}
    return Frame(Kind.HELLO, 0, 0, encode_body({**body, **fields}))


@pytest.mark.parametrize(
    ("codecs", "serializer", "accepted"),
    [
        (["msgpack", "pickle"], "pickle", True),
        (["msgpack", "pickle"], "msgpack", True),
        (["msgpack"], "msgpack", True),
        (["msgpack"], "pickle", False),
        (None, "msgpack", True),  # no "codecs": MessagePack only
        (None, "pickle", False),
        ("pickle", "pickle", False),  # not an array: not an offer
    ],
)
def test_check_hello_codecs(codecs: Any, serializer: str, accepted: bool) -> None:
    w = SimpleNamespace(id="w9", pid=4242, commands=())
    frame = _hello() if codecs is None else _hello(codecs=codecs)
    check: Callable[..., None] = check_hello
    if accepted:
        check(w, frame, serializer)
        assert w.commands == ("echo",)
    else:
        with pytest.raises(
            snakeden.WorkerStartError, match=r"worker w9 .*does not offer the pickle"
        ):
            check(w, frame, serializer)
        assert w.commands == ()


# --- the ERROR body, for any worker --------------------------------------------------------------


def test_error_bodies_of_other_runtimes_and_malformed_fields() -> None:
    # Only the original four fields: a plain RemoteError, as before.
    exc = error_from_body({"kind": "user", "type": "Error", "message": "m", "traceback": ""}, "c")
    assert (
        type(exc) is snakeden.RemoteError
        and str(exc) == "Error: m (raised by command 'c' in the worker)"
    )
    # Another runtime may name a Python built-in to get that type on the host.
    body = {
        "kind": "user",
        "type": "E",
        "message": "m",
        "module": "builtins",
        "qualname": "ValueError",
    }
    assert isinstance(error_from_body(body, "c"), ValueError)
    # Not an Exception subclass, a snakeden error, or junk: plain RemoteError.
    for module, qualname in [
        ("builtins", "SystemExit"),
        ("builtins", "KeyboardInterrupt"),
        ("snakeden._errors", "ProtocolError"),
        ("builtins", "len"),
        ("os", "path.join"),
        (1, ["x"]),
    ]:
        body = {"kind": "user", "type": "T", "message": "m", "module": module, "qualname": qualname}
        assert type(error_from_body(body, "c")) is snakeden.RemoteError, (module, qualname)
    # Malformed args/attrs are ignored, not fatal.
    body = {**body, "module": "builtins", "qualname": "KeyError", "args": "xy", "attrs": [1]}
    exc = error_from_body(body, "c")
    assert isinstance(exc, KeyError) and exc.args == ("m",)


def test_a_msgpack_body_is_never_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (os.abort, ())  # would kill the test process if ever loaded

    data = pickle.dumps(Boom())
    body = {"kind": "user", "type": "ValueError", "message": "m", "pickled": data}
    # Plain bytes (what a MessagePack body holds) are ignored...
    assert isinstance(error_from_body(body, "c"), snakeden.RemoteError)
    # ...only a PickledException, which only a pickled body can carry, is loaded.
    good = PickledException(pickle.dumps(AppError("from pickle")))
    exc = error_from_body({**body, "pickled": good, "traceback": "tb"}, "c")
    assert type(exc) is AppError and str(exc) == "from pickle"
    assert isinstance(exc.__cause__, snakeden.RemoteTraceback) and exc.__cause__.tb == "tb"
    # A pickled SystemExit is not raised as itself either.
    bad = PickledException(pickle.dumps(SystemExit(3)))
    body = {"kind": "user", "type": "SystemExit", "message": "exit code 3", "pickled": bad}
    assert type(error_from_body(body, "c")) is snakeden.RemoteError


def test_remote_errors_pickle_and_copy() -> None:
    body = {
        "kind": "user",
        "type": "CodedError",
        "message": "1: x",
        "traceback": "remote tb",
        "module": W,
        "qualname": "CodedError",
        "args": ["1: x"],
        "attrs": {"code": 1, "detail": "x"},
    }
    for exc in (error_from_body(body, "c"), error_from_body({**body, "module": "nowhere"}, "c")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and back.args == exc.args
        assert back.__dict__ == exc.__dict__
        assert isinstance(back.__cause__, snakeden.RemoteTraceback)
    assert isinstance(back, snakeden.RemoteError) and back.type_name == "CodedError"
