"""``python -m snakeden._bench``: the benchmark harness."""

from __future__ import annotations

import sys

from snakeden._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
