"""The benchmark harness: run every scenario for every contender, interleaved, and report.

``python -m snakeden bench [--short] [--out DIR] [--only NAMES]``, or ``snakeden._bench.main()``.
The harness process only orchestrates: each measurement runs in a fresh interpreter
(:mod:`_measure`), round-robin over the contenders within each repetition so that drift on the
machine hits everyone alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import psutil

from snakeden._bench import _floor
from snakeden._bench._common import BURN_ENV, SCENARIOS, Mode, Settings
from snakeden._bench._registry import CONTENDERS, Contender
from snakeden._bench._report import render_markdown, summarize
from snakeden._bench._snakeden import unavailable as snakeden_unavailable

DEFAULT_OUT = Path("benchmarks") / "results"
SRC_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds the snakeden package
PACKAGES = ("snakeden", "msgpack", "psutil", "numpy", "loky", "pebble", "mpire", "ray")
_MAX_ERRORS = 2  # a contender that fails this many times in a scenario sits the rest out


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)})"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ids = tuple(c.id for c in CONTENDERS)
    parser = argparse.ArgumentParser(
        prog="snakeden bench",
        description="Benchmark snakeden against a raw pipe floor and the other process pools.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="a quick run (a minute or two)")
    size.add_argument(
        "--tiny", action="store_true", help="a smoke run: a handful of samples, tiny sizes"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT}/)"
    )
    parser.add_argument(
        "--only",
        type=lambda t: _names(t, SCENARIOS, "scenario"),
        default=list(SCENARIOS),
        metavar="NAMES",
        help=f"comma-separated scenarios: {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--contenders",
        type=lambda t: _names(t, ids, "contender"),
        default=list(ids),
        metavar="IDS",
        help=f"comma-separated contenders: {','.join(ids)}",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions of every scenario")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--soak",
        action="store_true",
        help="run the chaos storms for minutes instead (see snakeden bench --soak --help)",
    )
    return parser.parse_args(argv)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(cc_note: str) -> dict[str, Any]:
    cpu_model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "load_avg_at_start": list(os.getloadavg()),
        "packages": {name: _version(name) for name in PACKAGES},
        "compiler": cc_note,
    }
    with contextlib.suppress(Exception):
        info["memory_total_mib"] = psutil.virtual_memory().total // (1024 * 1024)
    with contextlib.suppress(OSError), open("/proc/sys/fs/pipe-max-size") as f:
        info["pipe_max_size"] = int(f.read())
    cc = _floor.compiler()
    if cc:
        with contextlib.suppress(Exception):
            proc = subprocess.run(
                [cc, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            info["compiler_version"] = proc.stdout.splitlines()[0] if proc.stdout else "?"
    return info


class Runner:
    """Runs measurements in fresh processes and records them."""

    def __init__(self, settings: Settings, workdir: Path, c_echo: str | None, log: TextIO | None):
        self.settings = settings
        self.workdir = workdir
        self.c_echo = c_echo
        self.log = log
        self.count = 0
        self.env = dict(os.environ)
        self.env[BURN_ENV] = repr(settings.burn_s)
        path = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = str(SRC_ROOT) + (os.pathsep + path if path else "")

    def measure(self, contender: Contender, scenario: str, variant: str | None) -> dict[str, Any]:
        self.count += 1
        stem = self.workdir / f"m{self.count:04d}"
        spec = {
            "contender": contender.id,
            "scenario": scenario,
            "variant": variant,
            "settings": self.settings.to_json(),
            "c_echo": self.c_echo,
        }
        spec_path = stem.with_suffix(".spec.json")
        result_path = stem.with_suffix(".result.json")
        log_path = stem.with_suffix(".log")
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, "-m", "snakeden._bench._measure", str(spec_path)]
        t0 = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*command, str(result_path)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: we can kill all it started
            )
            timed_out = False
            try:
                proc.wait(timeout=self.settings.measure_timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Whatever the measurement left behind (or the measurement itself, if stuck).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.perf_counter() - t0
        if timed_out:
            result: dict[str, Any] = {
                "status": "error",
                "note": f"timed out after {self.settings.measure_timeout_s:g} s",
            }
        elif result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            note = f"the measurement process exited {proc.returncode}"
            result = {"status": "error", "note": note}
        if result["status"] == "error":
            result["log_tail"] = log_path.read_text(errors="replace")[-3000:]
        result["variant"] = variant
        result["process_wall_s"] = wall
        return result

    def progress(self, text: str) -> None:
        if self.log is not None:
            print(text, file=self.log, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    mode: Mode = "tiny" if args.tiny else "short" if args.short else "full"
    settings = Settings.for_mode(mode)
    if args.reps:
        settings = settings.with_reps(args.reps)
    scenarios = [s for s in SCENARIOS if s in args.only]
    contenders = [c for c in CONTENDERS if c.id in args.contenders]
    log = None if args.quiet else sys.stderr
    notes: list[str] = []
    started = time.perf_counter()
    generated = dt.datetime.now(dt.UTC).replace(microsecond=0)

    unavailable: dict[str, str] = {}
    sd_reason = snakeden_unavailable()
    for c in contenders:
        reason = (sd_reason if c.kind == "snakeden" else None) or c.missing()
        if reason:
            unavailable[c.id] = reason
            notes.append(f"{c.label} skipped: {reason}")

    with tempfile.TemporaryDirectory(prefix="snakeden-bench-") as tmp:
        workdir = Path(tmp)
        c_echo: str | None = None
        cc_note = "not needed"
        needs_c = any(c.id == "floor-c" for c in contenders) and any(
            s in scenarios for s in ("latency", "throughput", "payload")
        )
        if needs_c:
            c_echo, cc_note = _floor.compile_c_echo(workdir)
            if c_echo is None:
                unavailable["floor-c"] = cc_note
                notes.append(cc_note)
                print(f"note: {cc_note}", file=sys.stderr)
        machine = machine_info(cc_note)
        runner = Runner(settings, workdir, c_echo, log)
        results: dict[str, Any] = {}
        for scenario in scenarios:
            entries: dict[str, Any] = {}
            eligible: list[Contender] = []
            for c in contenders:
                entry: dict[str, Any] = {"label": c.label, "kind": c.kind, "runs": []}
                entries[c.id] = entry
                if scenario not in c.scenarios:
                    entry.update(status="n/a", note=c.why_not or "not applicable")
                elif c.id in unavailable:
                    entry.update(status="skipped", note=unavailable[c.id])
                else:
                    entry.update(status="pending", note="")
                    eligible.append(c)
            results[scenario] = {"contenders": entries}
            _run_scenario(runner, scenario, eligible, entries, settings)
            for entry in entries.values():
                if entry["status"] == "pending":
                    entry["status"] = "error"
        machine["load_avg_at_end"] = list(os.getloadavg())
    report: dict[str, Any] = {
        "schema": 1,
        "generated": generated.isoformat(),
        "mode": mode,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "elapsed_s": time.perf_counter() - started,
        "machine": machine,
        "settings": settings.to_json(),
        "scenarios": results,
        "notes": notes,
    }
    report["summary"] = summarize(results, settings)
    return report


def _run_scenario(
    runner: Runner,
    scenario: str,
    eligible: list[Contender],
    entries: dict[str, Any],
    settings: Settings,
) -> None:
    reps = settings.reps[scenario]
    variants: list[str | None] = (
        [str(n) for n in settings.coldstart_sizes] if scenario == "coldstart" else [None]
    )
    errors = dict.fromkeys((c.id for c in eligible), 0)
    for rep in range(reps):
        shift = rep % len(eligible) if eligible else 0
        order = eligible[shift:] + eligible[:shift]
        for variant in variants:
            for c in order:
                entry = entries[c.id]
                if entry["status"] in ("n/a", "skipped") or errors[c.id] >= _MAX_ERRORS:
                    continue
                result = runner.measure(c, scenario, variant)
                result["rep"] = rep
                entry["runs"].append(result)
                status = result["status"]
                where = f"{scenario}{'/' + variant if variant else ''} rep {rep + 1}/{reps}"
                runner.progress(
                    f"[{where}] {c.id}: {status} ({result['process_wall_s']:.1f} s)"
                    + (f" {result.get('note', '')}" if status != "ok" else "")
                )
                if status == "ok":
                    entry["status"] = "ok"
                elif status in ("n/a", "skipped"):
                    entry.update(status=status, note=result.get("note", ""))
                else:
                    errors[c.id] += 1
                    if entry["status"] != "ok":
                        entry["note"] = result.get("note", "")


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.fromisoformat(report["generated"]).strftime("%Y%m%d-%H%M%SZ")
    stem = f"bench-{report['mode']}-{stamp}"
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 on bad arguments."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    report = run(args)
    json_path, md_path = write(report, args.out)
    print(md_path.read_text())
    print(f"raw samples: {json_path}\nreport:      {md_path}", file=sys.stderr)
    return 0
