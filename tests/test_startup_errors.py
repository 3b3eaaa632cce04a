"""Start-up as a user meets it: workers import what the host imports, a failed start says its real
cause once, worker logging keeps its levels, and the fork template's thread check tells an idle
BLAS pool from a hazard. Real processes throughout."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import subprocess
import sys
import types
from typing import Any

import pytest

import snakeden
from snakeden import _template_proc
from snakeden._output import LOG_MARK, OutputTail, log_line
from snakeden._process import host_import_path, python_diagnosis, same_python, target_origin
from tests.conftest import run

METHODS = ["fork", "spawn"]
FAILING = ["tests.workers.import_exception", "tests.workers.setup_fails:Model"]
# The directory holding the snakeden under test: what a host needs on PYTHONPATH to import it,
# and nothing more (the editable install in the venv may point at another checkout).
SNAKEDEN_HOME = str(pathlib.Path(snakeden.__file__).resolve().parent.parent)


def run_host(script: str, *, cwd: pathlib.Path) -> str:
    """Run ``script`` as a program from ``cwd``, the way a user would, with an environment that
    carries nothing of this test process's import path. Returns its stdout; fails on exit != 0."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "SNAKEDEN" not in k}
    env["PYTHONPATH"] = SNAKEDEN_HOME
    done = subprocess.run(
        [sys.executable, "-X", "dev", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Task was destroyed" not in done.stderr, done.stderr
    return done.stdout


# --- item 6: workers find what the host finds ---------------------------------------------------


HOST = """
import json
import snakeden
import beside_me  # found by the host in its script's directory

results = {}
for method in ("fork", "spawn"):
    with snakeden.SyncPool("beside_me", size=1, start_method=method) as pool:
        results[method] = [pool.call("where"), pool.call(beside_me.where)]
    try:
        snakeden.SyncPool("nowhere_to_be_found", size=1, start_method=method)
    except snakeden.WorkerStartError as exc:
        results["missing " + method] = str(exc)
print(json.dumps(results))
"""

BESIDE = """
import snakeden

@snakeden.command
def where():
    return __file__
"""


def test_a_module_beside_the_host_script_imports_in_workers_run_from_another_cwd(
    tmp_path: pathlib.Path,
) -> None:
    app = tmp_path / "app"
    elsewhere = tmp_path / "elsewhere"
    app.mkdir()
    elsewhere.mkdir()
    (app / "host.py").write_text(HOST)
    (app / "beside_me.py").write_text(BESIDE)
    out = json.loads(run_host(str(app / "host.py"), cwd=elsewhere))
    for method in METHODS:
        assert out[method] == [str(app / "beside_me.py")] * 2, method
        missing = out["missing " + method]
        assert "module 'nowhere_to_be_found' not found in the worker" in missing
        assert f"the worker's sys.path is ['{app}'" in missing
        assert "the host cannot find it either" in missing


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_of_another_interpreter_gets_only_the_script_directory_and_says_where_the_host_found_the_module(  # noqa: E501
    method: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another interpreter (here: a wrapper around this one, so snakeden is importable) must not
    # be handed the host's own additions to sys.path beyond the script's directory.
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "only_the_host_sees.py").write_text(BESIDE)
    monkeypatch.setattr(sys, "path", [sys.path[0], str(hidden), *sys.path[1:]])
    other = tmp_path / "bin" / "python"
    other.parent.mkdir()
    other.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    other.chmod(0o755)
    assert not same_python(str(other))
    with pytest.raises(snakeden.WorkerStartError) as info:
        snakeden.SyncPool(
            "only_the_host_sees", size=1, start_method=method, python=str(other), start_timeout=60
        )
    text = str(info.value)
    assert "module 'only_the_host_sees' not found in the worker" in text
    assert f"the host found it at {hidden / 'only_the_host_sees.py'}" in text
    assert text.count("Traceback (most recent call last)") == 1


def test_the_host_import_path_is_whole_for_this_interpreter_and_only_the_script_dir_otherwise(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script_dir = tmp_path / "scripts"
    script_dir.mkdir()
    site_dir = pathlib.Path(sys.prefix) / "lib"
    monkeypatch.setattr(sys, "path", [str(script_dir), "", "/does/not/exist", str(site_dir)])
    monkeypatch.chdir(tmp_path)
    assert host_import_path(None) == [str(script_dir), str(tmp_path), str(site_dir)]
    assert host_import_path(sys.executable) == host_import_path(None)
    assert host_import_path("/some/venv/bin/python") == [str(script_dir)]
    # A console script's directory (inside the host's environment) is the host's, not the
    # user's: another interpreter gets nothing then.
    monkeypatch.setattr(sys, "path", [os.path.dirname(sys.executable), str(site_dir)])
    assert host_import_path("/some/venv/bin/python") == []


def test_target_origin_finds_modules_without_importing_them(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "fresh_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')")
    (pkg / "mod.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert target_origin("fresh_pkg.mod:Thing") == str(pkg / "mod.py")
    assert "fresh_pkg" not in sys.modules
    assert target_origin("fresh_pkg.nope") is None
    assert target_origin("no_such_top_level") is None
    assert target_origin("snakeden.examples") == str(
        pathlib.Path(snakeden.__file__).parent / "examples.py"
    )
    assert target_origin(None) is None


# --- item 7: errors say the real cause, once ----------------------------------------------------


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh virtual environment without snakeden (or anything else) in it."""
    where = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120
    )
    return str(where / "bin" / "python")


@pytest.mark.parametrize("method", METHODS)
def test_an_interpreter_without_snakeden_is_named_with_the_fix(
    method: str, bare_venv: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("PYTHONPATH")  # else the venv finds snakeden's sources, if not msgpack
    with pytest.raises(snakeden.WorkerStartError) as info:
        snakeden.SyncPool("snakeden.examples", size=2, start_method=method, python=bare_venv)
    text = str(info.value)
    assert f"snakeden is not installed in {bare_venv}" in text
    assert f"`{bare_venv} -m pip install snakeden`" in text
    assert "template died" not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_an_interpreter_missing_a_dependency_of_snakeden_is_named_with_the_fix(
    bare_venv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PYTHONPATH hands the venv snakeden's sources, but not msgpack.
    sources = os.path.dirname(os.path.dirname(snakeden.__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([sources, os.environ["PYTHONPATH"]]))
    with pytest.raises(snakeden.WorkerStartError) as info:
        snakeden.SyncPool("snakeden.examples", size=1, start_method="spawn", python=bare_venv)
    assert f"its dependency 'msgpack' is missing there; install it there with `{bare_venv}" in str(
        info.value
    )


def test_diagnosis_reads_only_what_it_recognises() -> None:
    assert python_diagnosis("py", ["ModuleNotFoundError: No module named 'snakeden_extra'"]) is None
    assert python_diagnosis("py", ["Segmentation fault"]) is None
    assert "not installed in py" in str(
        python_diagnosis("py", ["py: Error ... (ModuleNotFoundError: No module named 'snakeden')"])
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", FAILING)
def test_a_failed_start_shows_the_traceback_once_and_nothing_the_pool_caused(
    method: str, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def body() -> None:
        with pytest.raises(snakeden.WorkerStartError) as info:
            async with snakeden.Pool(target, size=2, start_method=method):
                pass
        seen = str(info.value) + "\n".join(r.getMessage() for r in caplog.records)
        assert seen.count("Traceback (most recent call last)") == 1, seen
        assert "SIGKILL" not in seen
        # Nothing left running that could report later, or be destroyed pending.
        assert not [t for t in asyncio.all_tasks() if "snakeden" in repr(t)]

    run(body())


def test_a_failed_sync_start_leaves_no_task_behind(caplog: pytest.LogCaptureFixture) -> None:
    import gc

    with pytest.raises(snakeden.WorkerStartError):
        snakeden.SyncPool("tests.workers.import_exception", size=1, start_method="fork")
    gc.collect()
    assert "Task was destroyed" not in caplog.text
    assert "SIGKILL" not in caplog.text


@pytest.mark.parametrize("method", METHODS)
def test_a_module_without_commands_is_warned_about_once_and_unknown_command_says_so(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.workers.no_commands import double

    async def body() -> None:
        async with snakeden.Pool("tests.workers.no_commands", size=2, start_method=method) as pool:
            assert await pool.call(double, 21) == 42  # by reference: legal
            with pytest.raises(snakeden.UnknownCommand, match="defines no commands"):
                await pool.call("double", 1)

    run(body())
    warnings = [r.getMessage() for r in caplog.records if "defines no @snakeden" in r.getMessage()]
    assert warnings == [
        "worker module 'tests.workers.no_commands' defines no @snakeden.command: calls by name "
        "will fail with UnknownCommand; only calls by reference (pool.call(function)) work"
    ]


def test_a_pool_without_a_module_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with snakeden.SyncPool(None, size=1) as pool:
        assert pool.call(max, 1, 2) == 2
    assert "defines no" not in caplog.text


# --- item 10: worker output at the right level --------------------------------------------------


def _worker_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("snakeden.worker")]


@pytest.mark.parametrize("method", METHODS)
def test_worker_logging_keeps_its_levels_and_plain_output_keeps_its_own(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="snakeden.worker")

    async def body() -> int:
        async with snakeden.Pool("tests.workers.logs", size=1, start_method=method) as pool:
            await pool.call("emit")
            pid: int = pool.worker_pids()[0]
        return pid  # closed: every worker's output has been read to its end

    pid = run(body())
    got = {(r.name, r.levelno, r.getMessage().split("] ", 1)[1]) for r in _worker_records(caplog)}
    ours = "snakeden.worker.tests.workers.logs"
    assert (ours, logging.DEBUG, "debug from the worker") in got
    assert (ours, logging.INFO, "info from the worker") in got
    assert ("snakeden.worker.root", logging.WARNING, "root warning\nsecond line") in got
    assert ("snakeden.worker", logging.WARNING, "plain stderr line") in got
    assert ("snakeden.worker", logging.INFO, "plain stdout line") in got
    error = next(r for r in _worker_records(caplog) if r.levelno == logging.ERROR)
    assert error.name == ours
    assert "error from the worker" in error.getMessage()
    assert "ZeroDivisionError" in error.getMessage()  # the traceback travels with the record
    assert error.worker_pid == pid  # type: ignore[attr-defined]
    assert error.stream == "log"  # type: ignore[attr-defined]
    assert error.worker_logger == "tests.workers.logs"  # type: ignore[attr-defined]
    assert not any(LOG_MARK in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", METHODS)
def test_a_module_that_configures_logging_keeps_its_level_and_is_not_shouted(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="snakeden.worker")
    with snakeden.SyncPool("tests.workers.logs_configured", size=1, start_method=method) as pool:
        pool.call("emit")
    got = [(r.levelno, r.getMessage()) for r in _worker_records(caplog)]
    info = [msg for level, msg in got if level == logging.INFO]
    assert any(msg.endswith("info from a configured worker") for msg in info), got
    assert not any("below the module's own level" in msg for _, msg in got)


def test_marked_lines_are_parsed_and_garbled_ones_stay_plain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="snakeden.worker")
    tail = OutputTail("stderr", "w9", 99)
    tail.feed((log_line(logging.INFO, "app.part", "two\nlines") + "\n").encode())
    tail.feed((LOG_MARK + "[20, oops\n").encode())
    tail.feed(b"just text\n")
    (first, garbled, plain) = caplog.records
    assert (first.name, first.levelno, first.getMessage()) == (
        "snakeden.worker.app.part",
        logging.INFO,
        "[w9 pid 99] two\nlines",
    )
    assert (garbled.name, garbled.levelno) == ("snakeden.worker", logging.WARNING)
    assert (plain.name, plain.levelno) == ("snakeden.worker", logging.WARNING)
    assert list(tail.lines)[:2] == ["INFO:app.part:two", "lines"]  # for crash reports' tails
    # A stdout line that happens to look marked is only text.
    out = OutputTail("stdout", "w9", 99)
    out.feed((log_line(logging.ERROR, "x", "y") + "\n").encode())
    assert caplog.records[-1].name == "snakeden.worker"


# --- item 11: the BLAS warning ------------------------------------------------------------------


def _template_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fork template for" in r.getMessage()]


def test_numpy_preloaded_into_the_template_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    with snakeden.SyncPool(
        "tests.workers.blas", size=1, start_method="fork", preload=["numpy"]
    ) as pool:
        assert pool.call("matmul_sum", 256) == 256.0**3  # BLAS works in the forked worker
    assert _template_warnings(caplog) == []


def test_an_unknown_native_thread_in_the_template_is_warned_about_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("threadpoolctl")
    with snakeden.SyncPool("tests.workers.native_thread", size=1, start_method="fork") as pool:
        assert pool.call("ping") == "pong"
    (warning,) = _template_warnings(caplog)
    assert "1 native thread(s) after import that are not an idle BLAS pool" in warning
    assert "start_method='spawn'" in warning
    assert "\n" not in warning


def _fake_threadpoolctl(pools: list[dict[str, Any]]) -> types.ModuleType:
    module = types.ModuleType("threadpoolctl")
    module.threadpool_info = lambda: pools  # type: ignore[attr-defined]
    return module


def test_thread_warning_tells_safe_pools_from_hazards(monkeypatch: pytest.MonkeyPatch) -> None:
    openblas = {"internal_api": "openblas", "threading_layer": "pthreads", "num_threads": 4}
    gomp = {"internal_api": "openmp", "prefix": "libgomp", "num_threads": 4}
    monkeypatch.setattr(_template_proc, "_native_threads", lambda: 4)
    monkeypatch.setitem(sys.modules, "threadpoolctl", _fake_threadpoolctl([openblas]))
    assert _template_proc.thread_warning() is None
    monkeypatch.setitem(sys.modules, "threadpoolctl", _fake_threadpoolctl([gomp]))
    assert "GNU OpenMP" in str(_template_proc.thread_warning())
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # not installed
    assert "install threadpoolctl" in str(_template_proc.thread_warning())
    monkeypatch.setattr(_template_proc, "_native_threads", lambda: 1)
    assert _template_proc.thread_warning() is None
