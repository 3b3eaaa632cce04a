"""A worker that logs at several levels without configuring logging, and writes to stderr and
stdout directly."""

from __future__ import annotations

import logging
import sys

import snakeden

log = logging.getLogger(__name__)


@snakeden.command
def emit() -> None:
    log.debug("debug from the worker")
    log.info("info from the worker")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("error from the worker")
    logging.getLogger().warning("root warning\nsecond line")
    print("plain stderr line", file=sys.stderr)
    print("plain stdout line")
