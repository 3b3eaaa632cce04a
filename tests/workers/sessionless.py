"""A Python worker whose HELLO does not list "session", as an older or another runtime's would:
``python tests/workers/sessionless.py <target>``, started with ``command=``."""

import sys

from snakeden import worker

worker.FEATURE_SESSION = "no-session"  # type: ignore[misc]  # what its HELLO lists instead

if __name__ == "__main__":
    sys.exit(worker.main())
