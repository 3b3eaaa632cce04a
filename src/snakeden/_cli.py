"""The ``snakeden`` command line: ``demo``, ``bench``, ``worker``, ``map``, ``top``, ``stats``,
``conformance``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="snakeden", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run the demo on the bundled example worker")
    demo.add_argument("--size", type=int, default=4)
    sub.add_parser("bench", help="run the benchmarks (snakeden bench --help)", add_help=False)
    sub.add_parser(
        "worker", help="serve a worker module (python -m snakeden.worker)", add_help=False
    )
    sub.add_parser(
        "conformance",
        help="check a worker program against the protocol: snakeden conformance -- <argv>",
        add_help=False,
    )
    if args and args[0] == "conformance":
        from snakeden.conformance import main as conformance_main

        return conformance_main(args[1:])
    if args and args[0] == "bench":
        from snakeden._bench import main as bench_main

        return bench_main(args[1:])
    if args and args[0] == "worker":
        from snakeden.worker import main as worker_main

        return worker_main(args[1:])
    from snakeden import _jobs, _top

    _jobs.add_parser(sub)
    _top.add_parsers(sub)
    ns = parser.parse_args(args)
    if ns.cmd == "demo":
        from snakeden._demo import run_demo

        return run_demo(ns.size)
    if ns.cmd == "map":
        return _jobs.run(ns)
    if ns.cmd == "top":
        return _top.run_top(ns)
    if ns.cmd == "stats":
        return _top.run_stats(ns)
    return 2
