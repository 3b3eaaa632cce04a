"""The pool's keyword options: one typed list (PoolOptions), checked by mypy and at run time."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import textwrap
from typing import Any, get_args

import pytest

import snakeden
from snakeden._config import OPTION_NAMES, PoolConfig, PoolOptions, make_config
from snakeden._events import EVENT_KINDS, EventKind
from snakeden._stats import Counters, Outcome

ROOT = pathlib.Path(__file__).resolve().parent.parent

FRONTS = [snakeden.Pool, snakeden.SyncPool]


def test_options_are_the_config_fields_but_target() -> None:
    fields = {f.name for f in dataclasses.fields(PoolConfig)} - {"target"}
    assert set(PoolOptions.__annotations__) == fields
    assert set(OPTION_NAMES) == fields


def test_every_option_is_documented_in_pool_options_and_the_readme() -> None:
    doc = PoolOptions.__doc__ or ""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Options") :].split("\n## ", 1)[0]
    for name in OPTION_NAMES:
        assert f"``{name}``" in doc, name
        assert re.search(rf"^\|[^|]*`{name}`", table, re.M), name


@pytest.mark.parametrize("front", FRONTS)
def test_a_misspelt_option_is_a_type_error_naming_the_closest(front: Any) -> None:
    with pytest.raises(TypeError, match="did you mean 'size'") as info:
        front("m", sise=2)
    assert "'sise'" in str(info.value)
    assert "max_start_failures" in str(info.value)  # the valid options are listed


def test_an_option_like_no_other_is_refused_without_a_guess() -> None:
    with pytest.raises(TypeError, match="unknown pool option 'zzzqqq'; the options are") as info:
        make_config("m", {"zzzqqq": 1})
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("front", FRONTS)
def test_a_bad_start_method_is_a_value_error_listing_the_values(front: Any) -> None:
    with pytest.raises(ValueError, match="start_method") as info:
        front("m", start_method="forkk")
    text = str(info.value)
    assert "'auto', 'fork', 'spawn'" in text
    assert "did you mean 'fork'" in text


@pytest.mark.parametrize("front", FRONTS)
def test_a_bad_serializer_is_a_value_error_listing_the_values(front: Any) -> None:
    with pytest.raises(ValueError, match="'msgpack', 'pickle'"):
        front("m", serializer="json")


def test_preload_takes_any_iterable_of_names_but_not_one_string() -> None:
    assert make_config("m", {"preload": (n for n in ["a", "b"])}).preload == ("a", "b")
    with pytest.raises(TypeError, match="list of module names"):
        make_config("m", {"preload": "numpy"})


def test_env_takes_any_mapping_or_none_and_is_copied() -> None:
    env = {"A": "1"}
    cfg = make_config("m", {"env": env})
    env["B"] = "2"
    assert cfg.env == {"A": "1"}
    assert make_config("m", {"env": None}).env == {}


def test_event_kinds_are_said_once() -> None:
    # The Literal is the source; the tuple and the kinds the pool emits come from it (mypy
    # checks every emit() against it).
    assert get_args(EventKind) == EVENT_KINDS and "ready" in EVENT_KINDS


def test_count_call_has_a_counter_for_every_outcome() -> None:
    names = ["calls_ok", "calls_failed", "calls_timed_out", "calls_crashed", "calls_cancelled"]
    for outcome in get_args(Outcome):
        c = Counters()
        c.count_call(outcome, 0.1, 0.2)
        counted = [n for n in names if getattr(c, n) == 1]
        assert len(counted) == 1, (outcome, counted)
        assert list(c.checkout_wait) == [0.1]
        assert list(c.call_latency) == [0.2]


def test_mypy_reports_a_misspelt_option_and_a_bad_start_method(tmp_path: pathlib.Path) -> None:
    api = pytest.importorskip("mypy.api")
    # Check this checkout's snakeden, not whichever one the environment has installed.
    src = pathlib.Path(snakeden.__file__).resolve().parent.parent
    (tmp_path / "mypy.ini").write_text(f"[mypy]\nmypy_path = {src}\n")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """\
            import snakeden

            snakeden.Pool("x", sise=2)
            snakeden.SyncPool("x", start_method="forkk")
            snakeden.Pool("x", size=2, start_method="fork", preload=["numpy"], env=None)
            """
        )
    )
    out, err, _status = api.run(
        [
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "test_options"),  # kept between runs: a warm start
            "--no-error-summary",
            "--hide-error-context",
            str(snippet),
        ]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert any("snippet.py:3:" in e and '"sise"' in e for e in errors), out + err
    assert any("snippet.py:4:" in e and "start_method" in e for e in errors), out + err
    assert not any("snippet.py:5:" in e for e in errors), out + err
