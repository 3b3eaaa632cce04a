"""Imported by a worker only (tests/workers/errors.py ``worker_only_error``), never by the test
host: a remote exception class the host does not have."""


class HiddenError(Exception):
    pass
