"""Run the snakeden benchmark: ``python benchmarks/run.py [--short] [--out DIR] [--only NAMES]``.

A thin wrapper around ``snakeden._bench.main`` (the same as ``python -m snakeden bench``) that also
works from a source checkout without installing snakeden.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from snakeden._bench import main
except ImportError:  # a source checkout that is not installed: use src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from snakeden._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
