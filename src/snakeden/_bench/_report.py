"""From raw samples to figures, ratios and the Markdown report."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from snakeden._bench._common import KIB, MIB, SCENARIOS, Settings, median, percentile
from snakeden._bench._registry import BY_ID, CONTENDERS
from snakeden._pipeline import MAX_DEPTH

TIMES = "\u00d7"  # the multiplication sign, spelled out for the linter

Run = dict[str, Any]  # one measurement as stored in the JSON ("variant", "samples", ...)
Compute = Callable[[Sequence[Run]], "float | None"]


@dataclass(frozen=True)
class Metric:
    scenario: str
    key: str
    label: str
    unit: str
    better: Literal["lower", "higher"]
    compute: Compute
    floors: tuple[str, ...] = ()  # contender ids that are this figure's floor
    missing: str = "—"  # shown when a contender ran but produced no such sample


def _series(runs: Sequence[Run], name: str, variant: str | None = None) -> list[list[float]]:
    out = []
    for run in runs:
        if variant is not None and run.get("variant") != variant:
            continue
        values = run.get("samples", {}).get(name)
        if values:
            out.append([float(v) for v in values])
    return out


def rep_median(name: str, scale: float = 1.0, variant: str | None = None) -> Compute:
    """The median over repetitions of each repetition's median."""

    def compute(runs: Sequence[Run]) -> float | None:
        per_rep = [median(values) for values in _series(runs, name, variant)]
        return median(per_rep) * scale if per_rep else None

    return compute


def pooled_percentile(name: str, q: float, scale: float = 1.0) -> Compute:
    """A percentile over every sample of every repetition."""

    def compute(runs: Sequence[Run]) -> float | None:
        pooled = [v for values in _series(runs, name) for v in values]
        return percentile(pooled, q) * scale if pooled else None

    return compute


def pooled_median(name: str, scale: float = 1.0) -> Compute:
    def compute(runs: Sequence[Run]) -> float | None:
        pooled = [v for values in _series(runs, name) for v in values]
        return median(pooled) * scale if pooled else None

    return compute


def mb_per_s(size: int, key: str = "rtt_s") -> Compute:
    """Payload bytes (one direction) per second of round trip, in MB/s (10^6 bytes)."""
    rtt = rep_median(f"{key}_{size}")

    def compute(runs: Sequence[Run]) -> float | None:
        seconds = rtt(runs)
        return size / seconds / 1e6 if seconds else None

    return compute


def ratio_of(top: Compute, bottom: Compute) -> Compute:
    def compute(runs: Sequence[Run]) -> float | None:
        a, b = top(runs), bottom(runs)
        return a / b if a is not None and b else None

    return compute


def human_size(size: int) -> str:
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= KIB and size % KIB == 0:
        return f"{size // KIB} KiB"
    return f"{size} B"


def metrics(s: Settings) -> list[Metric]:
    floors = ("floor-c", "floor-py", "floor-node")
    out = [
        Metric(
            "latency", "latency.median", "median", "µs", "lower", rep_median("call_s", 1e6), floors
        ),
        Metric(
            "latency",
            "latency.p99",
            "p99",
            "µs",
            "lower",
            pooled_percentile("call_s", 99, 1e6),
            floors,
        ),
        Metric(
            "latency",
            "latency.session",
            "median, in a session (snakeden only; same run as the plain call)",
            "µs",
            "lower",
            rep_median("session_call_s", 1e6),
            floors,
        ),
        Metric(
            "throughput",
            "throughput.submit",
            "one call each, all in flight",
            "calls/s",
            "higher",
            pooled_median("submit_calls_per_s"),
            floors,
        ),
        Metric(
            "throughput",
            "throughput.pipelined",
            f"one call each, all in flight, pipeline={MAX_DEPTH}, the most (snakeden only)",
            "calls/s",
            "higher",
            pooled_median("pipelined_calls_per_s"),
            floors,
        ),
        Metric(
            "throughput",
            "throughput.map",
            f"map, chunksize={s.chunksize}",
            "calls/s",
            "higher",
            pooled_median("map_calls_per_s"),
        ),
        Metric(
            "throughput",
            "throughput.map_default",
            "map, default chunksize",
            "calls/s",
            "higher",
            pooled_median("map_default_calls_per_s"),
        ),
    ]
    for size, _ in s.payload:
        out.append(
            Metric(
                "payload",
                f"payload.{size}",
                f"echo {human_size(size)}",
                "MB/s",
                "higher",
                mb_per_s(size),
                floors,
            )
        )
    for size, _ in s.payload:
        if size >= 1 << 20:
            out.append(
                Metric(
                    "payload",
                    f"payload.pipe.{size}",
                    f"echo {human_size(size)}, shm_threshold=None: by pipe (snakeden only)",
                    "MB/s",
                    "higher",
                    mb_per_s(size, "rtt_pipe_s"),
                    floors,
                )
            )
    many = f"{s.scale_many_callers:,} callers, {s.scale_many_workers} workers"
    out += [
        Metric(
            "scale",
            "scale.ready",
            f"{s.scale_workers} workers: start to all ready",
            "s",
            "lower",
            rep_median("scale_ready_s"),
        ),
        Metric(
            "scale",
            "scale.calls",
            f"{s.scale_workers} workers, {s.scale_callers} callers",
            "calls/s",
            "higher",
            rep_median("scale_calls_per_s"),
        ),
        Metric(
            "scale",
            "scale.cpu",
            f"{s.scale_workers} workers, {s.scale_callers} callers: host CPU per call",
            "µs",
            "lower",
            rep_median("scale_cpu_s", 1e6),
        ),
        Metric("scale", "scale.many", many, "calls/s", "higher", rep_median("many_calls_per_s")),
        Metric(
            "scale",
            "scale.many_cpu",
            f"{many}: host CPU per call",
            "µs",
            "lower",
            rep_median("many_cpu_s", 1e6),
        ),
    ]
    one = str(min(s.coldstart_sizes))
    for n in s.coldstart_sizes:
        ready = rep_median("ready_s", variant=str(n))
        label = "one worker" if n == 1 else f"pool of {n}"
        out.append(Metric("coldstart", f"coldstart.{n}", label, "s", "lower", ready, ("floor-py",)))
    for n in s.coldstart_sizes:
        if str(n) != one:
            out.append(
                Metric(
                    "coldstart",
                    f"coldstart.ratio.{n}",
                    f"pool of {n} / pool of {one}",
                    TIMES,
                    "lower",
                    ratio_of(
                        rep_median("ready_s", variant=str(n)), rep_median("ready_s", variant=one)
                    ),
                    ("floor-py",),
                )
            )
    for scenario in ("kill", "hang"):
        out += [
            Metric(
                scenario,
                f"{scenario}.error",
                "caller has its error",
                "s",
                "lower",
                rep_median("error_s"),
                missing="never (call lost)",
            ),
            Metric(
                scenario,
                f"{scenario}.capacity",
                "all workers serving again",
                "s",
                "lower",
                rep_median("capacity_s"),
                missing="not back",
            ),
        ]
    out += [
        Metric(
            "memory",
            "memory.uss",
            "USS per worker",
            "MiB",
            "lower",
            pooled_median("uss_mib"),
            ("floor-py",),
        ),
        Metric(
            "memory",
            "memory.pss",
            "PSS per worker",
            "MiB",
            "lower",
            pooled_median("pss_mib"),
            ("floor-py",),
        ),
        Metric(
            "memory",
            "memory.support",
            "USS of helper processes",
            "MiB",
            "lower",
            pooled_median("support_uss_mib"),
        ),
        Metric(
            "stream",
            "stream.one",
            "one stream",
            "items/s",
            "higher",
            pooled_median("stream_items_per_s"),
            ("floor-py",),
        ),
        Metric(
            "stream",
            "stream.eight",
            "eight streams in parallel",
            "items/s",
            "higher",
            pooled_median("stream8_items_per_s"),
            ("floor-py",),
        ),
    ]
    return out


def scenario_title(scenario: str, s: Settings) -> str:
    burn = f"{s.burn_s:g} s"
    return {
        "latency": f"Latency: trivial call `echo(b'x')`, one caller, pool of {s.size}",
        "throughput": f"Throughput: {s.throughput_calls:,} trivial calls, {s.size} workers",
        "payload": f"Payload echo: one caller, round trips, pool of {s.size}",
        "coldstart": (
            f"Cold start: workers import numpy + a module burning {burn} of CPU; "
            "time until every worker has answered a call"
        ),
        "kill": f"A worker SIGKILLed mid-call, pool of {s.size}",
        "hang": (
            f"A call hung in C (`libc.sleep({s.hang_sleep_s})`), timeout {s.hang_timeout_s:g} s, "
            f"pool of {s.size} (times from the call)"
        ),
        "memory": f"Memory: pool of {s.memory_size} with numpy loaded",
        "stream": (
            f"Streams: a generator command's {s.stream_items:,} small ints, read as they come "
            "(snakeden and its floor only)"
        ),
        "scale": (
            f"Scale: {s.scale_workers} workers ({s.scale_callers} callers at once), then "
            f"{s.scale_many_callers:,} callers at once on {s.scale_many_workers} workers; "
            f"{s.scale_calls:,} trivial calls each"
        ),
    }[scenario]


def _cost_ratio(metric: Metric, value: float, reference: float) -> float | None:
    """How many times worse than ``reference`` (>1 worse, <1 better), whatever the direction."""
    if reference == 0 or value == 0 or math.isnan(value) or math.isnan(reference):
        return None
    return value / reference if metric.better == "lower" else reference / value


def summarize(results: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Every figure per contender, its ratios to the floors and to the best peer."""
    summary: dict[str, Any] = {}
    for metric in metrics(s):
        contenders = results.get(metric.scenario, {}).get("contenders", {})
        values: dict[str, float | None] = {}
        for cid, entry in contenders.items():
            ok_runs = [r for r in entry["runs"] if r["status"] == "ok"]
            if ok_runs:
                values[cid] = metric.compute(ok_runs)
        peers = {
            cid: v
            for cid, v in values.items()
            if v is not None and BY_ID[cid].kind == "peer" and not math.isnan(v)
        }
        best_peer = None
        if peers:
            pick = min if metric.better == "lower" else max
            best_peer = pick(peers, key=lambda cid: peers[cid])
        ratios: dict[str, dict[str, float | None]] = {}
        for cid, value in values.items():
            if value is None:
                continue
            row: dict[str, float | None] = {}
            for floor in metric.floors:
                ref = values.get(floor)
                row[floor] = _cost_ratio(metric, value, ref) if ref is not None else None
            row["best_peer"] = _cost_ratio(metric, value, peers[best_peer]) if best_peer else None
            ratios[cid] = row
        summary[metric.key] = {
            "scenario": metric.scenario,
            "label": metric.label,
            "unit": metric.unit,
            "better": metric.better,
            "values": values,
            "floors": list(metric.floors),
            "best_peer": best_peer,
            "ratios": ratios,
        }
    return summary


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "nan"
    if unit == "calls/s":
        return f"{value:,.0f} calls/s"
    if unit == TIMES:
        return f"{value:.2f}{TIMES}"
    if unit == "s":
        return f"{value:.3f} s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}"


def _fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: one table per scenario, then notes."""
    s = Settings.from_json(report["settings"])
    machine = report["machine"]
    results = report["scenarios"]
    summary = report["summary"]
    lines = [
        f"# snakeden benchmark ({s.mode} mode)",
        "",
        f"{machine.get('cpu_model', '?')}, {machine.get('cpus', '?')} CPUs, "
        f"Python {machine.get('python', '?')}, Linux {machine.get('kernel', '?')}; "
        f"{report['generated']}; total {report['elapsed_s']:.0f} s.",
        "",
        "Each figure is a median over repetitions (p99 over all calls where stated). Contenders "
        "run round-robin within each repetition, each measurement in a fresh process. "
        "Ratios are *cost* ratios: how many times worse than the reference "
        "(>1 worse, <1 better), for times and rates alike. "
        f"`{TIMES} best peer` compares with the best of the other libraries.",
        "",
    ]
    metric_list = metrics(s)
    for scenario in SCENARIOS:
        if scenario not in results:
            continue
        lines += [f"## {scenario_title(scenario, s)}", ""]
        entries = results[scenario]["contenders"]
        # The Node floor's column only where it took part (a run with Node workers).
        node = entries.get("floor-node", {}).get("status") in ("ok", "partial")
        lines += [
            f"| contender | figure | value | {TIMES} C floor | {TIMES} Py floor "
            + (f"| {TIMES} Node floor " if node else "")
            + f"| {TIMES} best peer |",
            "|---|---|---:|---:|---:|---:|" + ("---:|" if node else ""),
        ]
        for metric in (m for m in metric_list if m.scenario == scenario):
            data = summary[metric.key]
            for contender in CONTENDERS:
                entry = entries.get(contender.id)
                if entry is None or entry["status"] not in ("ok", "partial"):
                    continue
                value = data["values"].get(contender.id)
                ratios = data["ratios"].get(contender.id, {})
                shown = metric.missing if value is None else _fmt(value, metric.unit)
                best = " (best peer)" if data["best_peer"] == contender.id else ""
                lines.append(
                    f"| {contender.label}{best} | {metric.label} | {shown} | "
                    f"{_fmt_ratio(ratios.get('floor-c'))} | {_fmt_ratio(ratios.get('floor-py'))} "
                    + (f"| {_fmt_ratio(ratios.get('floor-node'))} " if node else "")
                    + f"| {_fmt_ratio(ratios.get('best_peer'))} |"
                )
        lines.append("")
        notes = _scenario_notes(scenario, entries)
        if notes:
            lines += [*notes, ""]
    if report.get("notes"):
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in report["notes"]]
        lines.append("")
    return "\n".join(lines)


def _scenario_notes(scenario: str, entries: dict[str, Any]) -> list[str]:
    out = []
    for contender in CONTENDERS:
        entry = entries.get(contender.id)
        if entry is None:
            continue
        label = contender.label
        if entry["status"] in ("n/a", "skipped"):
            out.append(f"- {label}: {entry['status']}: {entry['note']}")
            continue
        notes: list[str] = []
        for run in entry["runs"]:
            if run["status"] == "ok":
                for note in run.get("notes", []):
                    if note not in notes:
                        notes.append(note)
                had = run.get("parent_had") or []
                if had and scenario in ("coldstart", "memory"):
                    text = f"the pool's parent process had already imported {', '.join(had)}"
                    if text not in notes:
                        notes.append(text)
            elif run["status"] == "error":
                text = f"error: {run.get('note', '?')}"
                if text not in notes:
                    notes.append(text)
        if notes:
            out.append(f"- {label}: " + "; ".join(notes))
    return out
