"""Smoke test of the benchmark harness: a tiny run writes the JSON and Markdown reports with the
expected keys. Only structure is checked, never a timing (the machine may be loaded)."""

from __future__ import annotations

import json
import pathlib

from snakeden._bench import _node, main
from snakeden._bench._common import SCENARIOS, Settings
from snakeden._bench._report import TIMES, metrics, scenario_title
from snakeden._bench._snakeden import unavailable as snakeden_unavailable

CONTENDERS = [
    "floor-c",
    "floor-py",
    "floor-node",
    "snakeden-async",
    "snakeden-sync",
    "snakeden-node",
    "cf-process",
]


def test_tiny_run_writes_both_reports(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results"
    argv = ["--tiny", "--quiet", "--out", str(out), "--only", "latency,throughput"]
    assert main([*argv, "--contenders", ",".join(CONTENDERS)]) == 0

    (json_path,) = out.glob("*.json")
    (md_path,) = out.glob("*.md")
    report = json.loads(json_path.read_text())
    assert {"schema", "generated", "mode", "machine", "settings", "scenarios", "summary"} <= set(
        report
    )
    assert report["mode"] == "tiny"
    machine = report["machine"]
    assert {"cpu_model", "cpus", "python", "kernel", "packages"} <= set(machine)
    assert {"snakeden", "msgpack", "psutil"} <= set(machine["packages"])
    assert set(report["scenarios"]) == {"latency", "throughput"}

    settings = Settings.from_json(report["settings"])
    latency = report["scenarios"]["latency"]["contenders"]
    assert set(latency) == set(CONTENDERS)

    # The Python floor always runs; every per-call sample is kept.
    floor = latency["floor-py"]
    assert floor["status"] == "ok"
    (run,) = floor["runs"]
    assert len(run["samples"]["call_s"]) == settings.latency_calls
    assert latency["floor-c"]["status"] in ("ok", "skipped")  # skipped without a C compiler

    # snakeden runs whenever its core is importable.
    expected = "ok" if snakeden_unavailable() is None else "skipped"
    for scenario in ("latency", "throughput"):
        for front in ("snakeden-async", "snakeden-sync"):
            entry = report["scenarios"][scenario]["contenders"][front]
            assert entry["status"] == expected, entry
    # The Node contenders run where node (and node/node_modules) are, and are skipped elsewhere.
    node_floor = "ok" if _node.node_missing() is None else "skipped"
    node_worker = "ok" if expected == "ok" and _node.unavailable() is None else "skipped"
    for scenario in ("latency", "throughput"):
        contenders = report["scenarios"][scenario]["contenders"]
        assert contenders["floor-node"]["status"] == node_floor, contenders["floor-node"]
        assert contenders["snakeden-node"]["status"] == node_worker, contenders["snakeden-node"]
    if node_worker == "ok":
        assert f"{TIMES} Node floor" in md_path.read_text()
    if expected == "ok":
        (run,) = report["scenarios"]["throughput"]["contenders"]["snakeden-async"]["runs"]
        assert {"submit_calls_per_s", "map_calls_per_s"} <= set(run["samples"])

    # A figure for every metric of the scenarios run, with ratios to the floors and best peer.
    keys = {m.key for m in metrics(settings) if m.scenario in ("latency", "throughput")}
    assert keys <= set(report["summary"])
    median = report["summary"]["latency.median"]
    assert median["values"]["floor-py"] > 0
    assert median["best_peer"] == "cf-process"
    assert median["ratios"]["floor-py"]["floor-py"] == 1.0
    assert "best_peer" in median["ratios"]["cf-process"]

    markdown = md_path.read_text()
    assert markdown.startswith("# snakeden benchmark (tiny mode)")
    assert "## Latency" in markdown
    assert "## Throughput" in markdown
    assert "floor: Python pipe echo" in markdown
    assert "snakeden Pool (asyncio)" in markdown


def test_unknown_scenario_is_an_error(tmp_path: pathlib.Path) -> None:
    assert main(["--tiny", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert not list(tmp_path.iterdir())


def test_every_scenario_has_a_title() -> None:
    for mode in ("full", "short", "tiny"):
        settings = Settings.for_mode(mode)
        assert set(settings.reps) == set(SCENARIOS)
        for scenario in SCENARIOS:
            assert scenario_title(scenario, settings)
