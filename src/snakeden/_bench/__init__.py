"""The snakeden benchmark harness (``python -m snakeden bench``; see :func:`main`).

Compares snakeden's two fronts with a raw pipe-echo floor (Python and C) and with the other
process pools (concurrent.futures, multiprocessing, loky, pebble, mpire, Ray), scenario by
scenario, and writes a Markdown report plus a JSON file with every raw sample.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line arguments ``argv`` (``--short``, ``--out DIR``,
    ``--only NAMES``, ...; ``--soak [--minutes N]`` runs the chaos storms instead); return the
    process exit status."""
    # Lazily: workers import snakeden._bench.workers / peer_tasks and must not pay for this.
    if argv and "--soak" in argv:
        from snakeden._bench._soak import soak_main

        return soak_main(argv)
    from snakeden._bench._harness import main as _main

    return _main(argv)
