"""A worker module that configures logging itself, at INFO, the usual way."""

from __future__ import annotations

import logging

import snakeden

logging.basicConfig(level=logging.INFO)
log = logging.getLogger(__name__)


@snakeden.command
def emit() -> None:
    log.debug("debug, below the module's own level")
    log.info("info from a configured worker")
